"""Fixtures for the IAM stand-in tests: real servers on loopback, driven over HTTP.

`iam` is one stand-in for the whole session; `start_standin` starts extra ones for tests that
restart a server or read its log. A browser is an httpx.Client with a cookie jar.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import KeySet

REPO = Path(__file__).resolve().parents[2]
DEMO_USERS = REPO / "iam" / "demo-users.yaml"

HUB_CALLBACK = "http://127.0.0.1:8000/hub/oauth_callback"
OTHER_CALLBACK = "http://127.0.0.1:9999/other/callback"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

# Clients of the test configuration: name -> (secret, extra config). The hub is registered
# the way the platform registers JupyterHub's GenericOAuthenticator.
CLIENTS = {
    "hub": {
        "client_secret": "hub-secret-Zq81",
        "redirect_uris": [HUB_CALLBACK],
        "scopes": ["openid", "profile", "email", "offline_access", "wlcg", "wlcg.groups"],
        "grant_types": ["authorization_code", "refresh_token", TOKEN_EXCHANGE],
    },
    "rotating": {
        "client_secret": "rotating-secret-Hw27",
        "redirect_uris": [HUB_CALLBACK],
        "scopes": ["openid", "profile", "email", "offline_access"],
        "refresh_token_rotation": True,
    },
    "short": {
        "client_secret": "short-secret-Pk44",
        "redirect_uris": [HUB_CALLBACK],
        "scopes": ["openid", "profile", "offline_access"],
        "lifetimes": {"code": 2, "refresh_token": 2, "access_token": 2},
    },
    "wlcg-client": {
        "client_secret": "wlcg-secret-Ty90",
        "redirect_uris": [HUB_CALLBACK],
        "scopes": ["openid", "profile", "offline_access", "wlcg", "wlcg.groups",
                   "storage.read:/data"],
        "token_profile": "wlcg",
    },
    "exchanger": {
        "client_secret": "exchanger-secret-Mn63",
        "scopes": ["openid", "profile", "offline_access", "storage.read:/"],
        "grant_types": [TOKEN_EXCHANGE, "refresh_token"],
    },
    "public": {
        "redirect_uris": [OTHER_CALLBACK],
        "scopes": ["openid", "profile"],
    },
    "service": {
        "client_secret": "service-secret-Lc18",
        "scopes": ["openid", "storage.read:/"],
        "grant_types": ["client_credentials"],
    },
}

# Test-only accounts beside the demo set: one to suspend, one without groups, one deep.
EXTRA_USERS = [
    {"username": "carol", "sub": "c0c0c0c0-0000-4000-8000-000000000001",
     "password": "carol-test", "name": "Carol Suspended", "email": "carol@example.org",
     "groups": ["officina/users"], "active": True},
    {"username": "dave", "sub": "d0d0d0d0-0000-4000-8000-000000000002",
     "password": "dave-test", "name": "Dave Nogroups", "email": "dave@example.org",
     "groups": []},
    {"username": "erin", "sub": "e0e0e0e0-0000-4000-8000-000000000003",
     "password": "erin-test", "name": "Erin Deep", "email": "erin@example.org",
     "groups": ["officina/gpu/a100", "visitors"]},
    {"username": "frank", "sub": "f0f0f0f0-0000-4000-8000-000000000004",
     "password": "frank-test", "name": "Frank Frozen", "groups": ["officina/users"],
     "active": False},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pkce_pair(method: str = "S256") -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    if method == "plain":
        return verifier, verifier
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def demo_users() -> list[dict]:
    return yaml.safe_load(DEMO_USERS.read_text())["users"]


def password_of(username: str) -> str:
    for user in demo_users() + EXTRA_USERS:
        if user["username"] == username:
            return user["password"]
    raise KeyError(username)


def secret_of(client_id: str) -> str | None:
    return CLIENTS[client_id].get("client_secret")


@dataclass
class Login:
    code: str
    state: str
    verifier: str | None
    redirect_uri: str
    browser: httpx.Client


@dataclass
class StandIn:
    """One running stand-in process and helpers to talk OAuth to it.

    Test modules reach the shared constants and helpers through this object, because
    importing from conftest.py is not reliable when several test folders have one.
    """

    HUB_CALLBACK = HUB_CALLBACK
    OTHER_CALLBACK = OTHER_CALLBACK
    TOKEN_EXCHANGE = TOKEN_EXCHANGE
    CLIENTS = CLIENTS
    EXTRA_USERS = EXTRA_USERS

    workdir: Path
    port: int
    config: dict
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self):
        self.config_path = self.workdir / "iam.yaml"
        self.log_path = self.workdir / "iam.log"
        self.config_path.write_text(yaml.safe_dump(self.config))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url + "/"

    @property
    def users_file(self) -> Path:
        return self.workdir / self.config["users_file"]

    # -- process --

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "officina.iam", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=os.environ.copy(),
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stand-in exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"stand-in did not answer:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- HTTP --

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        with self.client() as http:
            return http.get(path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        with self.client() as http:
            return http.post(path, **kwargs)

    def jwks(self) -> KeySet:
        return KeySet.import_key_set(self.get("/jwk").json())

    def verify(self, token: str) -> dict:
        """Claims of a JWT after checking its RS256 signature against the published JWKS."""
        decoded = jwt.decode(token, self.jwks(), algorithms=["RS256"])
        assert decoded.header["kid"] == "rsa1"
        assert decoded.header["alg"] == "RS256"
        return decoded.claims

    def authorize_params(self, client_id="hub", scope="openid profile email offline_access",
                         pkce="S256", redirect_uri=HUB_CALLBACK, **extra) -> tuple[dict, str]:
        params = {"response_type": "code", "client_id": client_id, "scope": scope,
                  "redirect_uri": redirect_uri, "state": secrets.token_urlsafe(8), **extra}
        verifier = None
        if pkce:
            verifier, challenge = pkce_pair(pkce)
            params.update(code_challenge=challenge, code_challenge_method=pkce)
        return params, verifier

    def login_form(self, browser: httpx.Client, params: dict) -> httpx.Response:
        response = browser.get("/authorize", params=params)
        assert response.status_code == 200, response.text
        assert 'name="username"' in response.text and 'name="password"' in response.text
        return response

    def submit_login(self, browser, page: httpx.Response, username, password) -> httpx.Response:
        action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1))
        csrf = re.search(r'name="csrf" value="([^"]*)"', page.text).group(1)
        return browser.post(action, data={"username": username, "password": password,
                                          "csrf": csrf})

    def login(self, username="alice", password=None, browser=None, **kwargs) -> Login:
        """The browser's side of the code flow: /authorize, login form, redirect back."""
        params, verifier = self.authorize_params(**kwargs)
        browser = browser or self.client()
        page = self.login_form(browser, params)
        response = self.submit_login(browser, page, username, password or password_of(username))
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert location.startswith(params["redirect_uri"] + "?"), location
        query = parse_qs(urlsplit(location).query)
        assert query["state"] == [params["state"]]
        return Login(query["code"][0], query["state"][0], verifier, params["redirect_uri"],
                     browser)

    def token_request(self, client_id: str, data: dict, secret: str | None = "") -> httpx.Response:
        """POST /token with HTTP Basic client authentication (the way the hub does it)."""
        secret = secret_of(client_id) if secret == "" else secret
        auth = (client_id, secret) if secret else None
        if secret is None:
            data = {**data, "client_id": client_id}
        return self.post("/token", data=data, auth=auth)

    def exchange_code(self, login: Login, client_id="hub", verifier="") -> httpx.Response:
        data = {"grant_type": "authorization_code", "code": login.code,
                "redirect_uri": login.redirect_uri}
        verifier = login.verifier if verifier == "" else verifier
        if verifier:
            data["code_verifier"] = verifier
        return self.token_request(client_id, data)

    def tokens(self, username="alice", client_id="hub",
               scope="openid profile email offline_access", **kwargs) -> dict:
        login = self.login(username, client_id=client_id, scope=scope, **kwargs)
        response = self.exchange_code(login, client_id)
        assert response.status_code == 200, response.text
        return response.json()

    def refresh(self, refresh_token: str, client_id="hub", secret="", **extra) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
        return self.token_request(client_id, data, secret)

    def userinfo(self, access_token: str) -> httpx.Response:
        return self.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"})

    @staticmethod
    def error_of(response: httpx.Response) -> tuple[int, str, str]:
        """(status, error, error_description) of an OAuth JSON error answer."""
        body = response.json()
        return response.status_code, body.get("error"), body.get("error_description", "")

    password_of = staticmethod(password_of)
    secret_of = staticmethod(secret_of)
    pkce_pair = staticmethod(pkce_pair)


def make_config(workdir: Path, port: int, **overrides) -> dict:
    users_file = workdir / "users.yaml"
    users_file.write_text(yaml.safe_dump({"users": demo_users() + EXTRA_USERS}))
    config = {
        "issuer": f"http://127.0.0.1:{port}/",
        "host": "127.0.0.1",
        "port": port,
        "state_dir": "state",
        "users_file": "users.yaml",
        "clients": [{"client_id": cid, **spec} for cid, spec in CLIENTS.items()],
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def iam(tmp_path_factory) -> StandIn:
    workdir = tmp_path_factory.mktemp("iam")
    port = free_port()
    standin = StandIn(workdir, port, make_config(workdir, port))
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def start_standin(tmp_path):
    """Start extra stand-ins (own state directory each); stopped after the test."""
    started: list[StandIn] = []

    def start(**overrides) -> StandIn:
        workdir = tmp_path / f"standin{len(started)}"
        workdir.mkdir()
        port = free_port()
        standin = StandIn(workdir, port, make_config(workdir, port, **overrides))
        standin.start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()

