"""Token-service latency for N sessions renewing at once, against a direct refresh at the IdP.

Officina: N users logged in to the embedded platform; each "session" asks the hub's token
service (`GET /hub/api/officina/token/<user>`, with the user's own JupyterHub token), all at
the same moment, once their tokens are past the refresh point (so the hub refreshes at IAM
for every one of them) and once while still fresh (the hub answers from its auth state).
Baseline: the same N users' refresh tokens sent straight to the IdP's token endpoint, all
at once, by the same HTTP client with the same threads: what a session holding its own
refresh token (and the client secret) would do.

    .venv/bin/python benchmarks/tokens.py [--sessions 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from platform_harness import HubSession, Platform, officina_accounts  # noqa: E402

LIFETIME = 20  # seconds; the hub refreshes at half of it


def write_users(path: Path, n: int) -> dict[str, str]:
    users = {f"tok{i:02d}": f"pw-{i:02d}-tokens" for i in range(1, n + 1)}
    path.write_text(yaml.safe_dump({"users": [
        {"username": u, "sub": f"10000000-0000-4000-8000-{i:012d}", "password": p,
         "name": u.title(), "groups": ["officina/users"]}
        for i, (u, p) in enumerate(users.items(), 1)
    ]}))
    return users


def direct_refresh_token(platform: Platform, client_secret: str, user: str, password: str) -> str:
    """A refresh token of the hub's client for `user`, by the code flow with PKCE, by hand."""
    redirect = f"{platform.url}hub/oauth_callback"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    with httpx.Client(base_url=platform.issuer, timeout=30) as browser:
        page = browser.get("authorize", params={
            "response_type": "code", "client_id": "officina-hub", "redirect_uri": redirect,
            "scope": "openid profile email offline_access", "state": "s",
            "code_challenge": challenge, "code_challenge_method": "S256"})
        action = re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1).replace("&amp;", "&")
        csrf = re.search(r'name="csrf" value="([^"]*)"', page.text).group(1)
        answer = browser.post(urljoin(str(page.url), action),
                              data={"username": user, "password": password, "csrf": csrf})
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        tokens = browser.post("token", auth=("officina-hub", client_secret), data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "code_verifier": verifier}).json()
    return tokens["refresh_token"]


def at_once(requests: list, threads: int) -> list[float]:
    """Run the callables together (released by one barrier); each one's latency in ms."""
    barrier = threading.Barrier(len(requests))

    def timed(call):
        barrier.wait()
        t0 = time.perf_counter()
        response = call()
        elapsed = (time.perf_counter() - t0) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
        return elapsed

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(timed, requests))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.sessions
    accounts_before = officina_accounts() if os.geteuid() == 0 else set()
    results: dict[str, list[float]] = {"Officina token service, refresh due": [],
                                       "Officina token service, token fresh": [],
                                       "direct refresh at the IdP": []}
    with tempfile.TemporaryDirectory(prefix="officina-bench-") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o711)
        users_file = tmp / "users.yaml"
        users = write_users(users_file, n)
        (tmp / "officina").mkdir()
        platform = Platform(root=tmp / "officina", overrides={
            "iam": {"standin": {"users_file": str(users_file), "access_token_lifetime": LIFETIME}},
            "sessions": {"idle_timeout": 0}})
        platform.up()
        try:
            api_tokens = {}
            for user, password in users.items():
                person = HubSession(platform, user, password)
                assert person.login_without_session().status_code == 302
                api_tokens[user] = person.token()
            client_secret = (platform.state_dir / "secrets" / "iam_client_secret").read_text().strip()
            refresh_tokens = {u: direct_refresh_token(platform, client_secret, u, p) for u, p in users.items()}
            client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=n))

            def service(user):
                return lambda: client.get(f"{platform.url}hub/api/officina/token/{user}",
                                          headers={"Authorization": f"token {api_tokens[user]}"})

            def direct(user):
                return lambda: client.post(f"{platform.issuer}token", auth=("officina-hub", client_secret),
                                           data={"grant_type": "refresh_token", "refresh_token": refresh_tokens[user]})

            for _ in range(args.rounds):
                # Past the refresh point for every user: each request makes the hub refresh.
                time.sleep(LIFETIME * 0.5 + 1)
                results["Officina token service, refresh due"] += at_once([service(u) for u in users], n)
                results["Officina token service, token fresh"] += at_once([service(u) for u in users], n)
                results["direct refresh at the IdP"] += at_once([direct(u) for u in users], n)
            client.close()
        finally:
            platform.down()
            platform.emergency_stop()
    if os.geteuid() == 0:
        for name in sorted(officina_accounts() - accounts_before):
            subprocess.run(["userdel", name], capture_output=True)

    print(f"\nToken renewal latency, ms: {n} sessions at once, {args.rounds} rounds "
          f"({os.cpu_count()} cores; same client, same threads)\n")
    print(f"{'':<40}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, values in results.items():
        print(f"{name:<40}{pct(values, 0.5):>9.1f}{pct(values, 0.99):>9.1f}{statistics.mean(values):>9.1f}")
    base = results["direct refresh at the IdP"]
    for name in list(results)[:2]:
        print(f"ratio {name[24:]:<34}{pct(results[name], 0.5) / pct(base, 0.5):>9.2f}"
              f"{pct(results[name], 0.99) / pct(base, 0.99):>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
