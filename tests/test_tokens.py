"""The token path: IAM -> hub -> session, with 60-second access tokens.

The session's `$BEARER_TOKEN_FILE` must always hold a token IAM accepts; the refresh token
and the hub's client secret must never reach the session; a refresh token IAM no longer
accepts must send the user back to the login page, with a message.
"""

from __future__ import annotations

import concurrent.futures
import os
import pwd
import stat
import time
from pathlib import Path
from urllib.parse import urljoin

import httpx
import psutil
import pytest
import yaml

from platform_harness import HubSession, start_platform, wait_for

pytestmark = pytest.mark.timeout(900)

LIFETIME = 60


DEMO_USERS = Path(__file__).resolve().parent.parent / "iam" / "demo-users.yaml"
CAROL = {"username": "carol", "sub": "c4r01-0000-4000-8000-000000000001", "password": "carol-demo",
         "name": "Carol Changes", "groups": ["officina/users"]}


def write_users(path: Path, carol_groups: list[str]) -> None:
    users = yaml.safe_load(DEMO_USERS.read_text())["users"] + [{**CAROL, "groups": carol_groups}]
    path.write_text(yaml.safe_dump({"users": users}))


@pytest.fixture(scope="module")
def short_tokens(platform_roots):
    root = platform_roots("tokens")
    users_file = root / "users.yaml"
    write_users(users_file, CAROL["groups"])
    # Rotating refresh tokens: a refresh race would kill the login, so the tests see it.
    platform = start_platform(
        root,
        iam={"standin": {"access_token_lifetime": LIFETIME, "refresh_token_rotation": True,
                         "users_file": str(users_file)}},
        sessions={"idle_timeout": 0},
    )
    platform.users_file = users_file
    yield platform
    try:
        platform.down()
    finally:
        platform.emergency_stop()


def token_file(platform, user: str) -> Path:
    return platform.state_dir / "homes" / user / ".officina" / "bearer_token"


def session_api(platform, person: HubSession, path: str, method: str = "GET") -> httpx.Response:
    """The session extension's API, called with a hub API token of the user (as a script would)."""
    if not hasattr(person, "api_token_for_tests"):
        person.api_token_for_tests = person.token()
    url = urljoin(platform.url, f"user/{person.username}/officina/api/{path}")
    return httpx.request(method, url, headers={"Authorization": f"token {person.api_token_for_tests}"}, timeout=60)


def iam_accepts(platform, token: str) -> bool:
    r = httpx.get(platform.issuer + "userinfo", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return r.status_code == 200


def jwt_exp(token: str) -> int:
    import base64
    import json

    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]


def test_token_file_stays_valid_across_three_expiry_cycles(short_tokens):
    platform = short_tokens
    alice = HubSession(platform, "alice")
    alice.login()
    alice.start_server()
    path = token_file(platform, "alice")
    wait_for(path.exists, 30, "the bearer token file")

    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    if os.geteuid() == 0:
        assert pwd.getpwuid(info.st_uid).pw_name.startswith("officina-alice")

    seen: list[str] = []
    deadline = time.time() + 3 * LIFETIME + 15
    while time.time() < deadline:
        token = path.read_text().strip()
        now = time.time()
        assert jwt_exp(token) > now + 5, "the session's token is (almost) expired"
        if not seen or seen[-1] != token:
            assert iam_accepts(platform, token), "IAM refuses the session's token"
            seen.append(token)
        time.sleep(3)
    # 3 lifetimes at renewal halfway through: at least 6 tokens, certainly more than 3.
    assert len(seen) >= 4, f"only {len(seen)} distinct tokens in {3 * LIFETIME} s"

    status = session_api(platform, alice, "token").json()
    assert status["state"] == "valid"
    assert status["user"] == "alice"
    assert {"officina", "officina/users"} <= set(status["groups"])
    assert status["expires_at"] == jwt_exp(path.read_text().strip())
    assert "access_token" not in status and path.read_text().strip() not in str(status)


def test_session_never_sees_refresh_token_or_client_secret(short_tokens):
    platform = short_tokens
    alice = HubSession(platform, "alice")
    alice.login()
    alice.start_server()
    # A kernel too: it is where user code runs.
    kernel = httpx.post(urljoin(platform.url, "user/alice/api/kernels"), json={}, timeout=60,
                        headers={"Authorization": f"token {alice.token()}"})
    assert kernel.status_code == 201, kernel.text
    wait_for(token_file(platform, "alice").exists, 30, "the bearer token file")

    admin = HubSession(platform, "admin")
    admin.login_without_session()
    auth_state = admin.hub_api("GET", "users/alice").json()["auth_state"]
    refresh_token = auth_state["refresh_token"]
    client_secret = (platform.state_dir / "secrets" / "iam_client_secret").read_text().strip()
    secrets = {"refresh token": refresh_token.encode(), "client secret": client_secret.encode()}
    assert all(len(v) > 16 for v in secrets.values())

    server_pid = int(__import__("json").loads((platform.state_dir / "run" / "servers" / "alice.pid").read_text())["pid"])
    server = psutil.Process(server_pid)
    processes = [server, *server.children(recursive=True)]
    assert len(processes) >= 2, "the kernel should be a child of the session's server"
    for proc in processes:
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        for what, value in secrets.items():
            assert value not in environ, f"{what} in the environment of {proc.name()} ({proc.pid})"
            assert value not in cmdline, f"{what} in the arguments of {proc.name()} ({proc.pid})"
        assert b"BEARER_TOKEN_FILE=" in environ or proc.pid != server_pid

    home = platform.state_dir / "homes" / "alice"
    logs = platform.state_dir / "logs"
    access_token = token_file(platform, "alice").read_text().strip().encode()
    for folder, forbidden in ((home, secrets), (logs, {**secrets, "access token": access_token})):
        for file in folder.rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                for what, value in forbidden.items():
                    assert value not in data, f"{what} found in {file}"


def test_concurrent_renewals_refresh_once(short_tokens):
    platform = short_tokens
    # A user with no running session, so that no token keeper renews in between.
    person = HubSession(platform, "admin")
    person.login_without_session()
    api_token = person.token()
    url = urljoin(platform.url, "hub/api/officina/token/admin")
    headers = {"Authorization": f"token {api_token}"}
    first = httpx.get(url, headers=headers, timeout=30).json()
    # Wait until the hub's token is past its refresh point: the next requests must refresh.
    wait_for(lambda: first["expires_at"] - time.time() < LIFETIME * 0.5 - 2, LIFETIME, "the refresh point")
    standin_log = platform.state_dir / "logs" / "iam-standin.log"
    before = standin_log.read_text().count("POST /token 200")

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: httpx.get(url, headers=headers, timeout=60), range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers if a.status_code != 200]
    tokens = {a.json()["access_token"] for a in answers}
    assert len(tokens) == 1, "concurrent requests got different tokens: more than one refresh ran"
    assert tokens != {first["access_token"]}
    time.sleep(1)
    refreshes = standin_log.read_text().count("POST /token 200") - before
    assert refreshes == 1, f"{refreshes} refreshes at IAM for ten concurrent requests"
    # And the login survived: with rotation, a second refresh of the old token would be a 401.
    assert httpx.get(url, headers=headers, timeout=30).status_code == 200


def test_narrower_token_for_an_audience(short_tokens):
    platform = short_tokens
    alice = HubSession(platform, "alice")
    alice.login_without_session()
    headers = {"Authorization": f"token {alice.token()}"}
    url = urljoin(platform.url, "hub/api/officina/token/alice")
    r = httpx.get(url, headers=headers, params={"audience": "https://xcache.example", "scope": "openid profile"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["audience"] == "https://xcache.example"
    assert body["scope"] == "openid profile"
    assert iam_accepts(platform, body["access_token"])
    # A scope the hub's client is not registered for is the caller's error, said plainly.
    bad = httpx.get(url, headers=headers, params={"scope": "storage.write:/"}, timeout=30)
    assert bad.status_code == 400 and "storage.write:/" in bad.json()["message"]
    # Another user's tokens are out of reach of alice's token.
    other = httpx.get(urljoin(platform.url, "hub/api/officina/token/bob"), headers=headers, timeout=30)
    assert other.status_code in (403, 404)


def test_revoked_refresh_token_sends_the_user_back_to_login(short_tokens):
    platform = short_tokens
    bob = HubSession(platform, "bob")
    bob.login()
    bob.start_server()
    wait_for(token_file(platform, "bob").exists, 30, "bob's bearer token file")

    admin = HubSession(platform, "admin")
    admin.login_without_session()
    refresh_token = admin.hub_api("GET", "users/bob").json()["auth_state"]["refresh_token"]
    client_secret = (platform.state_dir / "secrets" / "iam_client_secret").read_text().strip()
    revoked = httpx.post(platform.issuer + "revoke", data={"token": refresh_token, "token_type_hint": "refresh_token"},
                         auth=("officina-hub", client_secret), timeout=10)
    assert revoked.status_code == 200, revoked.text

    # At the next renewal the hub's refresh is refused: the session learns it must log in.
    status = wait_for(
        lambda: (s := session_api(platform, bob, "token").json())["state"] == "login_required" and s,
        LIFETIME + 30, "the session to report login_required", interval=2,
    )
    assert "must log in again" in status["message"] and "invalid_token" in status["message"]

    # The browser is sent to the login page, with the reason; no error page.
    home = bob.http.get(urljoin(platform.url, "hub/home"))
    assert home.status_code == 200 and "/hub/login" in str(home.url), home.url
    assert any(c.name == "officina-relogin" for c in bob.http.cookies.jar)
    assert "Your IAM login has ended" in home.text

    # Logging in again restores the token path without restarting the session.
    bob.login_without_session()
    renewed = session_api(platform, bob, "token", method="POST")
    assert renewed.status_code == 200 and renewed.json()["state"] == "valid", renewed.text


def test_session_status_widget_shows_identity_groups_and_expiry(short_tokens):
    from platform_harness import run_in_terminal

    platform = short_tokens
    alice = HubSession(platform, "alice")
    alice.login()
    alice.start_server()
    wait_for(token_file(platform, "alice").exists, 30, "the bearer token file")
    out = run_in_terminal(
        platform, "alice", alice.token(),
        "python -c 'from officina.widgets import SessionStatus; "
        "import officina.lab as l; print(SessionStatus().view.value); print(l.token_status()[\"state\"])'",
    )
    assert "<th" in out and "alice" in out, out
    assert "officina/users" in out
    assert "renewed automatically" in out and "valid" in out
    assert token_file(platform, "alice").read_text().strip() not in out


def test_groups_follow_iam_at_refresh_and_losing_access_ends_the_login(short_tokens):
    platform = short_tokens
    carol = HubSession(platform, "carol", CAROL["password"])
    assert carol.login_without_session().status_code == 302
    headers = {"Authorization": f"token {carol.token()}"}
    url = urljoin(platform.url, "hub/api/officina/token/carol")
    first = httpx.get(url, headers=headers, timeout=30).json()
    assert "officina/gpu" not in carol.hub_api("GET", "user").json()["groups"]

    # IAM adds carol to the GPU group; at the next refresh the hub's groups follow.
    write_users(platform.users_file, ["officina/users", "officina/gpu"])
    wait_for(lambda: first["expires_at"] - time.time() < LIFETIME * 0.5 - 1, LIFETIME, "the refresh point")
    second = httpx.get(url, headers=headers, timeout=30)
    assert second.status_code == 200 and second.json()["access_token"] != first["access_token"]
    assert "officina/gpu" in second.json()["groups"]
    assert "officina/gpu" in carol.hub_api("GET", "user").json()["groups"]

    # IAM removes her from every allowed group: the next refresh ends her login, with the reason.
    write_users(platform.users_file, ["visitors"])
    wait_for(lambda: second.json()["expires_at"] - time.time() < LIFETIME * 0.5 - 1, LIFETIME, "the refresh point")
    third = httpx.get(url, headers=headers, timeout=30)
    assert third.status_code == 401, third.text
    assert third.json()["error"] == "login_required"
    assert "not a member of any group allowed" in third.json()["message"]
