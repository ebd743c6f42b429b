"""Login to JupyterLab-ready time: Officina's embedded platform against a bare JupyterHub.

The baseline is what a hub admin would set up by hand: JupyterHub with GenericOAuthenticator,
SimpleLocalProcessSpawner and configurable-http-proxy (started by the hub), against the same
IdP software (an IAM stand-in of its own, same users). Both run in the same invocation on
this machine, one after the other, with the same users and the same HTTP client; each login
goes through the IdP's login form and ends when /user/<name>/lab serves JupyterLab.

    .venv/bin/python benchmarks/spawn.py [--repeat 5] [--users 10] [--servers 10]

Prints median and p95 for one user at a time and for N users at once, and the ratios.
Then, per profile of the catalogue (CPU small, CPU large, GPU from a declared inventory),
the spawn time through the REST API, and the hub's memory per running server (its RSS with
`--servers` sessions running, minus its RSS with none, divided by their number) against the
bare hub, which has no profiles (its row is the same plain spawn).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from platform_harness import HubSession, Platform, free_ports, officina_accounts  # noqa: E402

PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent


def write_users(path: Path, n: int) -> dict[str, str]:
    users = {f"bench{i:02d}": f"pw-{i:02d}-bench" for i in range(1, n + 1)}
    path.write_text(
        yaml.safe_dump(
            {
                "users": [
                    {"username": u, "sub": f"00000000-0000-4000-8000-{i:012d}", "password": p,
                     "name": u.title(), "email": f"{u}@example.org", "groups": ["officina/users", "officina/gpu"]}
                    for i, (u, p) in enumerate(users.items(), 1)
                ]
            }
        )
    )
    return users


class BareHub:
    """JupyterHub + GenericOAuthenticator + SimpleLocalProcessSpawner, as a hub admin would."""

    def __init__(self, root: Path, users_file: Path):
        self.root = root
        self.port, self.hub_port, self.api_port, self.iam_port = free_ports(4)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.issuer = f"http://127.0.0.1:{self.iam_port}/"
        self.secret = secrets.token_hex(16)
        self.users_file = users_file
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        (self.root / "iam").mkdir(mode=0o700)
        iam_config = self.root / "iam" / "config.json"
        iam_config.write_text(json.dumps({
            "issuer": self.issuer, "host": "127.0.0.1", "port": self.iam_port,
            "state_dir": str(self.root / "iam"), "users_file": str(self.users_file),
            "clients": [{"client_id": "bare-hub", "client_secret": self.secret,
                         "redirect_uris": [f"{self.url}hub/oauth_callback"],
                         "scopes": ["openid", "profile", "email", "offline_access"],
                         "grant_types": ["authorization_code", "refresh_token"]}],
        }))
        os.chmod(iam_config, 0o600)
        self._spawn([PYTHON, "-m", "officina.iam", "--config", str(iam_config)], "iam.log")
        _wait_http(f"{self.issuer}.well-known/openid-configuration")
        homes = self.root / "homes"
        homes.mkdir()
        config = self.root / "jupyterhub_config.py"
        config.write_text(f"""
c.JupyterHub.bind_url = {self.url!r}
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.command = [{str(ROOT / 'node_modules/.bin/configurable-http-proxy')!r}]
c.JupyterHub.db_url = "sqlite:///{self.root / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = "{self.root / 'cookie_secret'}"
c.JupyterHub.authenticator_class = "generic-oauth"
c.GenericOAuthenticator.client_id = "bare-hub"
c.GenericOAuthenticator.client_secret = open("{self.root / 'client_secret'}").read()
c.GenericOAuthenticator.authorize_url = "{self.issuer}authorize"
c.GenericOAuthenticator.token_url = "{self.issuer}token"
c.GenericOAuthenticator.userdata_url = "{self.issuer}userinfo"
c.GenericOAuthenticator.oauth_callback_url = "{self.url}hub/oauth_callback"
c.GenericOAuthenticator.scope = ["openid", "profile", "email", "offline_access"]
c.GenericOAuthenticator.username_claim = "preferred_username"
c.GenericOAuthenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{homes}/{{username}}"
c.Spawner.cmd = [{str(VENV_BIN / 'jupyterhub-singleuser')!r}]
c.Spawner.args = ["--allow-root"] if __import__("os").geteuid() == 0 else []
c.Spawner.default_url = "/lab"
c.Spawner.interrupt_timeout = 3
c.Spawner.term_timeout = 3
""")
        secret_file = self.root / "client_secret"
        secret_file.write_text(self.secret)
        os.chmod(secret_file, 0o600)
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)}
        self._spawn([PYTHON, "-m", "jupyterhub", "-f", str(config)], "hub.log", env=env, cwd=self.root)
        _wait_http(f"{self.url}hub/health", timeout=90)

    def _spawn(self, argv, log, env=None, cwd=None):
        out = open(self.root / log, "ab")
        self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                           stdin=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 400:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class _Target:
    """What HubSession needs of a platform: its public URL."""

    def __init__(self, url: str):
        self.url = url


def login_to_lab(url: str, username: str, password: str) -> float:
    """Seconds from the first request to a served JupyterLab page; the server is stopped after."""
    session = HubSession(_Target(url), username, password)
    t0 = time.perf_counter()
    landed = session.login()  # a bare hub starts the default server when the login lands on /hub/spawn
    if "officina-profile" in landed.text:
        # Officina shows the profile form first: press Start with the preselected profile,
        # as a person does (the click is part of the measured time).
        session.http.post(str(landed.url), data={"_xsrf": session.xsrf_headers()["X-XSRFToken"]})
    while True:
        lab = session.http.get(f"{url}user/{username}/lab")
        if lab.status_code == 200 and "jupyter-config-data" in lab.text:
            break
        if time.perf_counter() - t0 > 180:
            raise RuntimeError(f"{username} not ready after 180 s")
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    session.hub_api("DELETE", f"users/{username}/server")
    return elapsed


def measure(url: str, users: dict[str, str], repeat: int, concurrent: int) -> dict[str, list[float]]:
    names = list(users)
    single = [login_to_lab(url, names[i % len(names)], users[names[i % len(names)]]) for i in range(repeat)]
    time.sleep(3)  # let the stopped servers go
    with ThreadPoolExecutor(concurrent) as pool:
        many = list(pool.map(lambda u: login_to_lab(url, u, users[u]), names[:concurrent]))
    time.sleep(3)
    return {"single": single, "many": many}


def spawn_profile(url: str, username: str, password: str, body: dict | None) -> tuple[float, HubSession]:
    """Seconds from the spawn request to a served JupyterLab; the server is left running."""
    session = HubSession(_Target(url), username, password)
    assert session.login_without_session().status_code == 302
    t0 = time.perf_counter()
    r = session.hub_api("POST", f"users/{username}/server", json=body or {})
    assert r.status_code in (201, 202), r.text
    while True:
        lab = session.http.get(f"{url}user/{username}/lab")
        if lab.status_code == 200 and "jupyter-config-data" in lab.text:
            return time.perf_counter() - t0, session
        if time.perf_counter() - t0 > 180:
            raise RuntimeError(f"{username} not ready after 180 s")
        time.sleep(0.1)


def measure_profiles(url: str, users: dict[str, str], profiles: list[str | None], repeat: int
                     ) -> dict:
    """Spawn time per profile (None: no profile asked)."""
    names = list(users)
    times: dict = {}
    for profile in profiles:
        body = {"profile": profile} if profile else None
        times[profile] = []
        for i in range(repeat):
            name = names[i % len(names)]
            elapsed, session = spawn_profile(url, name, users[name], body)
            times[profile].append(elapsed)
            session.hub_api("DELETE", f"users/{name}/server")
            time.sleep(1)
    return times


def measure_memory(url: str, users: dict[str, str], servers: int, hub_pid, body: dict | None) -> dict:
    """Hub RSS per user with a running server, from a freshly started hub (so that the
    heap the other measurements grew does not hide the cost)."""
    baseline = psutil.Process(hub_pid()).memory_info().rss
    running = [spawn_profile(url, name, users[name], body)[1] for name in list(users)[:servers]]
    time.sleep(3)
    per_server = (psutil.Process(hub_pid()).memory_info().rss - baseline) / len(running)
    for session in running:
        session.hub_api("DELETE", f"users/{session.username}/server")
    time.sleep(3)
    return {"rss_per_server": per_server, "rss_base": baseline}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="logins of one user at a time")
    parser.add_argument("--users", type=int, default=10, help="users logging in at once")
    parser.add_argument("--servers", type=int, default=10, help="running servers for the hub memory figure")
    args = parser.parse_args()
    accounts_before = officina_accounts() if os.geteuid() == 0 else set()
    results = {}
    profile_results: dict = {}
    memory: dict = {}
    with tempfile.TemporaryDirectory(prefix="officina-bench-") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o711)
        users_file = tmp / "users.yaml"
        users = write_users(users_file, max(args.users, args.repeat, args.servers))
        os.chmod(users_file, 0o600)

        (tmp / "officina").mkdir()
        platform = Platform(root=tmp / "officina", overrides={
            "iam": {"standin": {"users_file": str(users_file)}},
            # A declared inventory: the GPU profile's allocation path runs without a GPU.
            "sessions": {"idle_timeout": 0, "gpus": [{"index": i, "model": "a100"} for i in range(8)]}})
        platform.up()
        try:
            hub_pid = lambda: int((platform.state_dir / "run" / "jupyterhub.pid").read_text())  # noqa: E731
            memory["Officina"] = measure_memory(platform.url, users, args.servers, hub_pid, {"profile": "cpu-small"})
            # Untimed warm-up: first imports fill the page cache for both contenders.
            login_to_lab(platform.url, *next(iter(users.items())))
            results["Officina"] = measure(platform.url, users, args.repeat, args.users)
            profile_results["Officina"] = measure_profiles(
                platform.url, users, ["cpu-small", "cpu-large", "gpu"], args.repeat)
        finally:
            platform.down()
            platform.emergency_stop()

        (tmp / "bare").mkdir()
        bare = BareHub(tmp / "bare", users_file)
        try:
            bare.start()
            memory["bare JupyterHub"] = measure_memory(bare.url, users, args.servers, lambda: bare.procs[-1].pid, None)
            login_to_lab(bare.url, *next(iter(users.items())))
            results["bare JupyterHub"] = measure(bare.url, users, args.repeat, args.users)
            profile_results["bare JupyterHub"] = measure_profiles(bare.url, users, [None], args.repeat)
        finally:
            bare.stop()
    if os.geteuid() == 0:
        for name in sorted(officina_accounts() - accounts_before):
            subprocess.run(["userdel", name], capture_output=True)

    print(f"\nLogin to JupyterLab ready, seconds ({os.cpu_count()} cores; {args.repeat} single logins, "
          f"{args.users} users at once)\n")
    print(f"{'':<18}{'1 user median':>14}{'1 user p95':>12}{f'{args.users} users median':>18}{f'{args.users} users p95':>15}")
    for name, r in results.items():
        print(f"{name:<18}{statistics.median(r['single']):>14.2f}{p95(r['single']):>12.2f}"
              f"{statistics.median(r['many']):>18.2f}{p95(r['many']):>15.2f}")
    o, b = results["Officina"], results["bare JupyterHub"]
    print(f"{'ratio':<18}{statistics.median(o['single']) / statistics.median(b['single']):>14.2f}"
          f"{p95(o['single']) / p95(b['single']):>12.2f}"
          f"{statistics.median(o['many']) / statistics.median(b['many']):>18.2f}"
          f"{p95(o['many']) / p95(b['many']):>15.2f}")
    print("\ntargets: ratio <= 1.1; Officina single-user median < 4 s")

    bare = profile_results["bare JupyterHub"]
    bare_median = statistics.median(bare[None])
    print(f"\nSpawn time per profile through the REST API, seconds ({args.repeat} spawns each)\n")
    print(f"{'':<28}{'median':>8}{'p95':>8}{'ratio to bare':>15}")
    for profile, values in profile_results["Officina"].items():
        print(f"{'Officina ' + profile:<28}{statistics.median(values):>8.2f}{p95(values):>8.2f}"
              f"{statistics.median(values) / bare_median:>15.2f}")
    print(f"{'bare JupyterHub (no profile)':<28}{bare_median:>8.2f}{p95(bare[None]):>8.2f}{1:>15.2f}")
    print(f"\nHub memory per user with a running server ({args.servers} servers, fresh hub), MB\n")
    for name, r in memory.items():
        print(f"{name:<28}{r['rss_per_server'] / 1024**2:>8.2f}   (hub RSS with none running: {r['rss_base'] / 1024**2:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
