"""Run the embedded platform exactly as a user does (`officina up`), on free loopback ports.

Also: logging in over plain HTTP through the IAM stand-in's real login page, starting a
session through the hub's REST API, and typing into a session's terminal.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx
import psutil
import yaml

VENV_BIN = Path(sys.executable).parent
OFFICINA = str(VENV_BIN / "officina")
DEMO_PASSWORDS = {"admin": "admin-demo", "alice": "alice-demo", "bob": "bob-demo", "mallory": "mallory-demo"}


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def officina_accounts() -> set[str]:
    return {p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("officina-")}


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.5):
    """Poll `predicate` until it returns something true (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_platform(root: Path, **overrides) -> "Platform":
    platform = Platform(root=root, overrides=overrides)
    platform.up()
    return platform


@dataclass
class Platform:
    root: Path
    overrides: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        hub_port, internal, proxy_api, iam_port, dask_port, dask_api, dashboards, resources, condor = free_ports(9)
        self.config = {
            "state_dir": str(self.root / "state"),
            "hub": {"port": hub_port, "internal_port": internal, "proxy_api_port": proxy_api},
            "iam": {"standin": {"port": iam_port}},
            "dask": {"port": dask_port, "api_port": dask_api, "dashboards_port": dashboards},
            "resources": {"port": resources},
            # No HTCondor root here unless a test names one: `officina up` says why it runs no pool.
            "condor": {"enabled": "auto", "root": str(self.root / "no-condor-root"), "port": condor},
        }
        # The data federation only where a test asks for it (data: {enabled: true}), on free
        # ports: it adds daemons and a generated dataset to every platform otherwise.
        cache, redirector, cmsd, site_a, site_b = free_ports(5)
        self.config["data"] = {
            "enabled": False,
            "cache": {"port": cache},
            "redirector": {"port": redirector, "cmsd_port": cmsd},
            "sites": [
                {"name": "site-a", "origin": "embedded", "port": site_a, "paths": ["/store/data"],
                 "read": [{"path": "/store/data", "groups": ["officina"]}]},
                {"name": "site-b", "origin": "embedded", "port": site_b, "paths": ["/store/mc"],
                 "read": [{"path": "/store/mc", "groups": ["officina/gpu", "officina/admins"]}]},
            ],
        }
        _deep_update(self.config, self.overrides)
        self.config_file = self.root / "officina.yaml"
        self.config_file.write_text(yaml.safe_dump(self.config))
        self.log_file = self.root / "officina-up.log"

    @property
    def url(self) -> str:
        base = self.config["hub"].get("base_url", "/")
        return f"http://127.0.0.1:{self.config['hub']['port']}{base}"

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.config['iam']['standin']['port']}/"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config['dask']['port']}"

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [OFFICINA, *args, "--config", str(self.config_file)],
            capture_output=True, text=True, timeout=timeout,
        )

    def up(self, timeout: float = 120) -> None:
        log = open(self.log_file, "a")
        self.proc = subprocess.Popen(
            [OFFICINA, "up", "--config", str(self.config_file)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"officina up exited with {self.proc.returncode}:\n{self.log_file.read_text()}")
            if self.table().get("state") == "running":
                return
            time.sleep(0.3)
        raise RuntimeError(f"officina up not running after {timeout} s:\n{self.log_file.read_text()}")

    def down(self, timeout: float = 120) -> subprocess.CompletedProcess:
        result = self.cli("down", timeout=timeout)
        if self.proc is not None:
            self.proc.wait(timeout)
        return result

    def table(self) -> dict:
        try:
            return json.loads((self.state_dir / "run" / "officina.json").read_text())
        except (OSError, ValueError):
            return {}

    def component_pid(self, name: str) -> int:
        return self.table()["components"][name]["pid"]

    def process_family(self) -> list[psutil.Process]:
        """The supervisor and everything that descends from it, user sessions included."""
        sup = psutil.Process(self.proc.pid)
        family = [sup, *sup.children(recursive=True)]
        for pidfile in (self.state_dir / "run" / "servers").glob("*.pid"):
            try:
                server = psutil.Process(json.loads(pidfile.read_text())["pid"])
                family += [server, *server.children(recursive=True)]
            except (psutil.NoSuchProcess, OSError, ValueError):
                pass
        return family

    def emergency_stop(self) -> None:
        """Teardown for a test that failed half-way: end what this platform started."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                family = self.process_family()
            except psutil.NoSuchProcess:
                family = []
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                pass
            for p in family:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass


def _deep_update(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


class HubSession:
    """A person's browser reduced to HTTP: cookies, the IAM login form, XSRF."""

    def __init__(self, platform: Platform, username: str, password: str | None = None):
        self.platform = platform
        self.username = username
        self.password = password or DEMO_PASSWORDS[username]
        self.http = httpx.Client(follow_redirects=True, timeout=60)

    def login(self) -> httpx.Response:
        """Log in through the stand-in's own page; returns the last response of the dance."""
        page = self.http.get(urljoin(self.platform.url, "hub/oauth_login"))
        form_action = _form_action(page)
        return self.http.post(
            urljoin(str(page.url), form_action),
            data={"username": self.username, "password": self.password, **_hidden_fields(page.text)},
        )

    def login_without_session(self) -> httpx.Response:
        """Log in but stop at the hub's answer to the IAM callback (no session is started):
        a redirect into the hub when admitted, the refusal page otherwise."""
        page = self.http.get(urljoin(self.platform.url, "hub/oauth_login"))
        response = self.http.post(
            urljoin(str(page.url), _form_action(page)),
            data={"username": self.username, "password": self.password, **_hidden_fields(page.text)},
            follow_redirects=False,
        )
        while response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            response = self.http.get(target, follow_redirects=False)
            if "/hub/oauth_callback" in target:
                return response
        return response

    def xsrf_headers(self) -> dict:
        token = next((c.value for c in self.http.cookies.jar if c.name == "_xsrf"), None)
        return {"X-XSRFToken": token} if token else {}

    def hub_api(self, method: str, path: str, **kwargs) -> httpx.Response:
        url = urljoin(self.platform.url, "hub/api/" + path.lstrip("/"))
        return self.http.request(method, url, headers={**self.xsrf_headers(), **kwargs.pop("headers", {})}, **kwargs)

    def start_server(self, timeout: float = 120) -> None:
        r = self.hub_api("POST", f"users/{self.username}/server")
        assert r.status_code in (201, 202, 400), r.text  # 400: already running
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lab = self.http.get(urljoin(self.platform.url, f"user/{self.username}/lab"))
            if lab.status_code == 200 and "jupyter-config-data" in lab.text:
                return
            time.sleep(0.3)
        raise AssertionError(f"{self.username}'s server not ready within {timeout} s")

    def token(self) -> str:
        r = self.hub_api("POST", f"users/{self.username}/tokens", json={"note": "tests", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return r.json()["token"]


def _form_action(page: httpx.Response) -> str:
    match = re.search(r'<form[^>]*action="([^"]*)"', page.text)
    return (match.group(1).replace("&amp;", "&") if match else "") or str(page.url)


def _hidden_fields(html: str) -> dict:
    fields = {}
    for tag in re.findall(r"<input[^>]+type=\"hidden\"[^>]*>", html):
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name:
            fields[name.group(1)] = (value.group(1) if value else "").replace("&amp;", "&")
    return fields


def run_in_terminal(platform: Platform, username: str, token: str, command: str, timeout: float = 30) -> str:
    """Open a JupyterLab terminal of `username`'s session, run one shell command, return its output."""
    import asyncio

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}"}
    base = urljoin(platform.url, f"user/{username}/")
    r = httpx.post(base + "api/terminals", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    marker = "__officina_done__"

    async def talk() -> str:
        ws_url = base.replace("http://", "ws://") + f"terminals/websocket/{name}"
        conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
        # The marker is printed by the shell from two halves, so the echoed command line
        # cannot be mistaken for the end of the output.
        conn.write_message(json.dumps(["stdin", f"{command}; echo __officina_''done__\r"]))
        out = ""
        deadline = time.monotonic() + timeout
        while marker not in out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msg = await asyncio.wait_for(conn.read_message(), remaining)
            if msg is None:
                break
            kind, *payload = json.loads(msg)
            if kind == "stdout":
                out += payload[0]
        conn.close()
        return out

    try:
        # Its own thread: Playwright's sync API keeps an event loop running in this one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            output = pool.submit(asyncio.run, talk()).result()
    finally:
        httpx.delete(base + f"api/terminals/{name}", headers=headers, timeout=30)
    # Keep what the command printed: after the echoed command line, before the marker.
    after = output.split(f"echo __officina_''done__", 1)[-1]
    text = after.split(marker, 1)[0].replace("\r", "")
    # Terminal control sequences (bash's bracketed-paste switch, colours) are not output.
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def run_in_kernel(platform: Platform, username: str, token: str, code: str, timeout: float = 90,
                  server_name: str = "") -> dict:
    """Start a kernel in the user's session, run `code` as a cell, return what a notebook shows:
    {"stdout": ..., "stderr": ..., "error": ename or None, "traceback": text}."""
    import asyncio
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}"}
    prefix = f"user/{username}/{server_name + '/' if server_name else ''}"
    base = urljoin(platform.url, prefix)
    r = httpx.post(base + "api/kernels", headers=headers, json={}, timeout=60)
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]

    async def talk() -> dict:
        url = base.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": username, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        result = {"stdout": "", "stderr": "", "error": None, "traceback": ""}
        deadline = time.monotonic() + timeout
        replied = idle = False
        while not (replied and idle):
            raw = await asyncio.wait_for(conn.read_message(), max(0.1, deadline - time.monotonic()))
            if raw is None:
                result["error"] = result["error"] or "connection closed (kernel died?)"
                break
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                result[content["name"]] += content["text"]
            elif kind == "error":
                result["error"] = content["ename"]
                result["traceback"] = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"]))
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        conn.close()
        return result

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, talk()).result()
    finally:
        httpx.delete(base + f"api/kernels/{kernel_id}", headers=headers, timeout=30)
