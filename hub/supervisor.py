"""The embedded platform's supervisor: `officina up`, `officina down`, `officina status`.

One process starts the components in dependency order (IAM stand-in, proxy, JupyterHub, idle
culler), waits for each to answer its health check, then watches them. A component that dies
is reported and restarted with backoff: every component here is safe to restart because its
state is on disk (hub database, stand-in grants and key) or re-derived (the hub puts the
proxy's routes back, see `officina.hub.proxy`). Stopping ends, in reverse order, each process
the supervisor started and every process that descends from them (user servers and their
kernels included), by PID, and nothing else.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import psutil
import yaml

from .settings import Settings
from .state import StateDir, write_private

# Restart policy for a crashed component: at most this many restarts in the window, with
# exponential backoff; past that the platform is stopped rather than left half-working.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600


class SupervisorError(Exception):
    """`officina up/down` cannot go on; the message says why."""


@dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    health_url: str
    health_headers: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    proc: psutil.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def healthy(self, timeout: float = 2.0) -> bool:
        return probe_health(self.health_url, self.health_headers, timeout) == "healthy"


def probe_health(url: str, headers: dict, timeout: float) -> str:
    """"healthy", or why not. `tcp://host:port` (daemons without HTTP, HTCondor's collector):
    the port accepts a connection."""
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://"):].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return "healthy"
        except OSError as exc:
            return f"unhealthy ({exc.strerror or type(exc).__name__})"
    try:
        r = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"unhealthy ({type(exc).__name__})"
    return "healthy" if r.status_code < 400 else f"unhealthy (HTTP {r.status_code})"


def repository_root() -> Path:
    return Path(__file__).resolve().parent.parent


def find_proxy_binary() -> str:
    candidates = [
        os.environ.get("OFFICINA_PROXY_BIN"),
        str(repository_root() / "node_modules" / ".bin" / "configurable-http-proxy"),
        shutil.which("configurable-http-proxy"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SupervisorError(
        "configurable-http-proxy not found: run `npm ci` in the repository (the README's install "
        "step) or set OFFICINA_PROXY_BIN"
    )


def demo_accounts(users_file: Path) -> list[dict]:
    doc = yaml.safe_load(users_file.read_text()) or {}
    return doc.get("users", [])


def standin_users_file(settings: Settings) -> Path:
    configured = settings["iam"]["standin"]["users_file"]
    if configured:
        return Path(configured).expanduser().absolute()
    return Path(str(resources.files("officina.iam").joinpath("demo-users.yaml")))


class Supervisor:
    def __init__(self, settings: Settings, out=sys.stdout):
        self.settings = settings
        self.state = StateDir(settings.state_dir)
        self.out = out
        self.components: list[Component] = []
        self.notices: list[str] = []  # what the start banner must say is not running, and why
        self._stopping = False
        self._lock_fd: int | None = None

    # ----- reporting -------------------------------------------------------------------
    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[officina {stamp}] {message}", file=self.out, flush=True)
        try:
            with open(self.state.logs / "officina.log", "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d')} {stamp} {message}\n")
        except OSError:
            pass

    # ----- the one-instance lock ---------------------------------------------------------
    def acquire_lock(self) -> None:
        self.state.run.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            table = read_process_table(self.state)
            where = f" (supervisor pid {table.get('supervisor_pid')}, {table.get('public_url')})" if table else ""
            raise SupervisorError(
                f"Officina is already running from {self.state.root}{where}; "
                "stop it with `officina down` first"
            ) from None
        self._lock_fd = fd

    # ----- building the components -------------------------------------------------------
    def build_components(self) -> list[Component]:
        s, state = self.settings, self.state
        hub = s["hub"]
        python = sys.executable
        base_env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER")}
        base_env["PYTHONUNBUFFERED"] = "1"
        components = []
        if s.uses_standin:
            components.append(
                Component(
                    name="iam-standin",
                    argv=[python, "-m", "officina.iam", "--config", str(self.write_standin_config())],
                    env=dict(base_env),
                    cwd=state.iam,
                    health_url=f"{s.issuer}health",
                    ready_timeout=30,
                )
            )
        proxy_token = state.secret("proxy_auth_token")
        internal = f"http://127.0.0.1:{hub['internal_port']}"
        components.append(
            Component(
                name="proxy",
                argv=[
                    find_proxy_binary(),
                    "--ip", hub["ip"],
                    "--port", str(hub["port"]),
                    "--api-ip", "127.0.0.1",
                    "--api-port", str(hub["proxy_api_port"]),
                    "--default-target", internal,
                    "--error-target", f"{internal}{hub['base_url']}hub/error",
                    "--log-level", "warn",
                ],
                # The proxy reads its token from the environment: never on a command line.
                env={**base_env, "CONFIGPROXY_AUTH_TOKEN": proxy_token},
                cwd=state.run,
                health_url=f"http://127.0.0.1:{hub['proxy_api_port']}/api/routes",
                health_headers={"Authorization": f"token {proxy_token}"},
                ready_timeout=30,
            )
        )
        hub_config = Path(str(resources.files("officina.hub").joinpath("jupyterhub_config.py")))
        components.append(
            Component(
                name="jupyterhub",
                argv=[python, "-m", "jupyterhub", "-f", str(hub_config)],
                env={
                    **base_env,
                    "OFFICINA_SETTINGS": str(state.settings_file),
                    "JUPYTERHUB_CRYPT_KEY": state.secret("crypt_key"),
                    "CONFIGPROXY_AUTH_TOKEN": proxy_token,
                },
                cwd=state.hub,
                health_url=f"{internal}{hub['base_url']}hub/health",
                ready_timeout=90,
                # The hub stops every user server on its way out; give it time to.
                stop_timeout=45,
            )
        )
        if s["dask"]["enabled"]:
            # dask/ is traversable (each cluster's folder under clusters/ belongs to its user);
            # the gateway's database sits in the owner-only db/.
            (state.root / "dask").mkdir(exist_ok=True)
            os.chmod(state.root / "dask", 0o711)
            (state.root / "dask" / "db").mkdir(mode=0o700, exist_ok=True)
            gateway_config = Path(str(resources.files("officina.hub").joinpath("dask_gateway_config.py")))
            components.append(
                Component(
                    name="dask-gateway",
                    argv=[str(Path(python).parent / "dask-gateway-server"), "-f", str(gateway_config)],
                    env={
                        **base_env,
                        "OFFICINA_SETTINGS": str(state.settings_file),
                        # Secrets in the environment only: the hub token and the key that
                        # encrypts cluster records (TLS keys of schedulers) in its database.
                        "JUPYTERHUB_API_TOKEN": state.secret("dask_gateway_api_token"),
                        "DASK_GATEWAY_ENCRYPT_KEYS": state.fernet_key("dask_gateway_encrypt_key"),
                    },
                    cwd=state.root / "dask",
                    health_url=f"http://127.0.0.1:{s['dask']['port']}/api/health",
                    ready_timeout=60,
                    stop_timeout=30,
                )
            )
        condor = s["condor"]
        if condor["enabled"] is not False:
            from .condor.pool import host_can_run_condor

            can, why = host_can_run_condor(Path(condor["root"]))
            if can:
                components.append(
                    Component(
                        name="htcondor",
                        argv=[python, "-m", "officina.hub.condor", "run", "--root", condor["root"],
                              "--state", str(state.root / "condor"), "--homes", str(state.homes),
                              "--port", str(condor["port"])],
                        env=base_env,
                        cwd=state.run,
                        health_url=f"tcp://127.0.0.1:{condor['port']}",
                        ready_timeout=90,
                        stop_timeout=30,
                    )
                )
            elif condor["enabled"] is True:
                raise SupervisorError(f"condor.enabled is true, but the HTCondor pool cannot run here: {why}")
            else:
                self.notices.append(f"HTCondor pool not started: {why} (or set condor.enabled: false)")
        data = s["data"]
        if data["enabled"] is not False:
            from .data.federation import platform_can_run_federation

            can, why = platform_can_run_federation(s)
            if can:
                # After the IAM stand-in: the federation reads the issuer's keys at start.
                components.append(
                    Component(
                        name="data",
                        argv=[python, "-m", "officina.hub.data", "run", "--settings", str(state.settings_file)],
                        env=base_env,
                        cwd=state.run,
                        health_url=f"tcp://127.0.0.1:{data['cache']['port']}",
                        ready_timeout=120,
                        stop_timeout=30,
                    )
                )
            elif data["enabled"] is True:
                raise SupervisorError(f"data.enabled is true, but the data federation cannot run here: {why}")
            else:
                self.notices.append(f"Data federation not started: {why} (or set data.enabled: false)")
        sessions = s["sessions"]
        if sessions["idle_timeout"] or sessions["max_age"]:
            argv = [
                python, "-m", "jupyterhub_idle_culler",
                f"--url={internal}{hub['base_url']}hub/api",
                f"--timeout={sessions['idle_timeout'] or 10**9}",
                f"--cull-every={sessions['cull_every']}",
            ]
            if sessions["max_age"]:
                argv.append(f"--max-age={sessions['max_age']}")
            components.append(
                Component(
                    name="idle-culler",
                    argv=argv,
                    env={**base_env, "JUPYTERHUB_API_TOKEN": state.secret("culler_api_token")},
                    cwd=state.run,
                    # The culler has no port of its own: it is healthy while the hub API it
                    # polls is, and its process is alive (checked separately).
                    health_url=f"{internal}{hub['base_url']}hub/health",
                    ready_timeout=15,
                )
            )
        return components

    def write_standin_config(self) -> Path:
        s = self.settings
        standin = s["iam"]["standin"]
        redirect = f"{s.public_url}hub/oauth_callback"
        config = {
            "issuer": s.issuer,
            "host": "127.0.0.1",
            "port": standin["port"],
            "state_dir": str(self.state.iam),
            "users_file": str(standin_users_file(s)),
            "clients": [
                {
                    "client_id": s["iam"]["client_id"],
                    "client_secret": self.state.secret("iam_client_secret"),
                    "redirect_uris": [redirect],
                    "scopes": [
                        "openid", "profile", "email", "offline_access", "wlcg", "wlcg.groups",
                        "eduperson_entitlement",
                    ],
                    "grant_types": [
                        "authorization_code",
                        "refresh_token",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ],
                    "token_profile": standin["token_profile"],
                    "refresh_token_rotation": standin["refresh_token_rotation"],
                }
            ],
            "lifetimes": {
                "access_token": standin["access_token_lifetime"],
                "refresh_token": standin["refresh_token_lifetime"],
            },
        }
        path = self.state.iam / "standin.json"
        write_private(path, json.dumps(config, indent=2))
        return path

    # ----- lifecycle -----------------------------------------------------------------------
    def preflight(self) -> None:
        from .accounts import check_reachable_by_other_accounts

        if self.settings.run_as_system_accounts:
            problem = check_reachable_by_other_accounts(self.state.root)
            if problem:
                raise SupervisorError(problem)
        for port_key in ("port", "internal_port", "proxy_api_port"):
            port = self.settings["hub"][port_key]
            if _port_in_use(port):
                raise SupervisorError(f"hub.{port_key}: port {port} is already in use on this machine")
        if self.settings.uses_standin:
            port = self.settings["iam"]["standin"]["port"]
            if _port_in_use(port):
                raise SupervisorError(f"iam.standin.port: port {port} is already in use on this machine")

    def start_component(self, c: Component) -> None:
        log = open(self.state.logs / f"{c.name}.log", "ab")
        # Its own session: a Ctrl-C in the terminal reaches the supervisor only, which then
        # stops everything in order.
        c.proc = psutil.Popen(
            c.argv, env=c.env, cwd=c.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + c.ready_timeout
        while time.monotonic() < deadline:
            if c.proc.poll() is not None:
                raise SupervisorError(
                    f"{c.name} exited with code {c.proc.returncode} while starting; "
                    f"see {self.state.logs / (c.name + '.log')}:\n{_tail(self.state.logs / (c.name + '.log'))}"
                )
            if c.healthy(timeout=1):
                return
            time.sleep(0.2)
        raise SupervisorError(f"{c.name} did not become healthy within {c.ready_timeout:.0f} s; see {self.state.logs / (c.name + '.log')}")

    def write_process_table(self, state: str) -> None:
        table = {
            "supervisor_pid": os.getpid(),
            "state": state,
            "public_url": self.settings.public_url,
            "issuer": self.settings.issuer,
            "config": self.settings.source,
            "components": {
                c.name: {
                    "pid": c.proc.pid if c.proc else None,
                    "health_url": c.health_url,
                    "restarts": len(c.restarts),
                }
                for c in self.components
            },
        }
        write_private(self.state.process_table, json.dumps(table, indent=2))

    def up(self) -> int:
        self.state.prepare(shared_homes=self.settings.run_as_system_accounts)
        self.acquire_lock()
        self.preflight()
        write_private(self.state.settings_file, json.dumps(self.settings.raw, indent=2))
        self.components = self.build_components()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.write_process_table("starting")
        try:
            for c in self.components:
                self.say(f"starting {c.name}")
                self.start_component(c)
                self.write_process_table("starting")
        except SupervisorError:
            self.stop_all()
            self.write_process_table("stopped")
            raise
        except _StopRequested:
            self.stop_all()
            self.write_process_table("stopped")
            return 130
        return self.watch()

    def print_banner(self) -> None:
        s = self.settings
        lines = [f"Officina is running at {s.public_url}"]
        if s.run_as_system_accounts:
            lines.append("Sessions run as each user's own unprivileged system account (created at first login).")
        else:
            import pwd

            me = pwd.getpwuid(os.getuid()).pw_name
            lines.append(
                f"Running as the ordinary account {me!r}: every user's session runs as {me!r} "
                f"(homes are folders under {self.state.homes}); run as root for one account per user."
            )
        if s.uses_standin:
            lines.append(f"IAM: the embedded stand-in at {s.issuer}; accounts:")
            for user in demo_accounts(standin_users_file(s)):
                groups = ", ".join(user.get("groups", [])) or "no groups"
                lines.append(f"    {user['username']:<10} password {user.get('password', '?'):<14} groups: {groups}")
        else:
            lines.append(f"IAM: {s.issuer}")
        lines.append(f"Allowed groups: {', '.join(s['iam']['allowed_groups'])}; admin groups: {', '.join(s['iam']['admin_groups'])}")
        from .gpu_pool import detect_gpus
        from .limits import detect_mode

        mode = detect_mode()
        how = {"cgroup2": "cgroups v2 (memory.max, cpu.max per session)",
               "cgroup1": "cgroups v1 (memory and cpu controllers, per session)",
               "rlimit": "process resource limits (no writable cgroup here: per process, weaker)"}[mode]
        gpus = s["sessions"]["gpus"]
        gpu_text = (f"{len(gpus)} declared in sessions.gpus" if gpus is not None
                    else f"{len(detect_gpus())} found by nvidia-smi")
        lines.append(f"Profiles: {', '.join(p['slug'] for p in s['profiles'])}; limits by {how}; GPUs: {gpu_text}.")
        if any(c.name == "htcondor" for c in self.components):
            lines.append(f"HTCondor: a one-node pool on 127.0.0.1:{s['condor']['port']}; sessions get a token at start.")
        if any(c.name == "data" for c in self.components):
            lines.append(f"Data: sites {', '.join(site['name'] for site in s['data']['sites'])} behind an XCache at "
                         f"root://127.0.0.1:{s['data']['cache']['port']}// (reads with the user's token).")
        lines.extend(self.notices)
        lines.append("Stop with Ctrl-C or `officina down`.")
        self.say("\n  ".join(lines))

    def _on_signal(self, signum, frame):
        if not self._stopping:
            self._stopping = True
            raise _StopRequested()

    def watch(self) -> int:
        code = 0
        try:
            # Inside the try: a Ctrl-C right after start (while the banner is being made)
            # is an ordinary stop, not an error.
            self.write_process_table("running")
            self.print_banner()
            while True:
                time.sleep(0.5)
                for c in self.components:
                    if c.proc.poll() is None:
                        continue
                    if not self.restart(c):
                        code = 1
                        raise _StopRequested()
        except _StopRequested:
            pass
        self.say("stopping")
        self.stop_all()
        self.write_process_table("stopped")
        self.say("stopped")
        return code

    def restart(self, c: Component) -> bool:
        now = time.time()
        c.restarts = [t for t in c.restarts if now - t < RESTART_WINDOW_S]
        self.say(f"{c.name} (pid {c.proc.pid}) exited unexpectedly with code {c.proc.returncode}")
        if len(c.restarts) >= MAX_RESTARTS:
            self.say(f"{c.name} crashed {MAX_RESTARTS} times in {RESTART_WINDOW_S // 60} minutes; stopping the platform")
            return False
        c.restarts.append(now)
        # Catch what the dead process left behind (a proxy's worker, a stray child) first.
        self.reap_descendants_of_dead(c)
        backoff = 2 ** (len(c.restarts) - 1) * 0.5
        self.say(f"restarting {c.name} in {backoff:.1f} s (restart {len(c.restarts)} of at most {MAX_RESTARTS})")
        time.sleep(backoff)
        try:
            self.start_component(c)
        except SupervisorError as exc:
            self.say(str(exc))
            return len(c.restarts) < MAX_RESTARTS and self.restart(c)
        self.write_process_table("running")
        self.say(f"{c.name} is healthy again (pid {c.proc.pid})")
        return True

    def reap_descendants_of_dead(self, c: Component) -> None:
        # A dead component's session may still hold processes (its pgid is its old pid).
        try:
            os.killpg(c.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        """Stop components in reverse order, then any user server they left behind."""
        for c in reversed(self.components):
            if c.proc is None:
                continue
            self.say(f"stopping {c.name}")
            terminate_tree(c.proc, c.stop_timeout)
        sweep_user_servers(self.state, self.say)


class _StopRequested(Exception):
    pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def terminate_tree(proc: psutil.Process, timeout: float) -> None:
    """SIGTERM a process we started, wait, then SIGKILL it and whatever descends from it."""
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc]
    try:
        proc.terminate()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        pass
    for p in family:
        try:
            if p.is_running():
                p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=5)


def sweep_user_servers(state: StateDir, say) -> None:
    """End user servers whose pid files outlived the hub (a hub killed before its cleanup)."""
    from .accounts import read_server_pidfile

    for pidfile in sorted(state.servers.glob("*.pid")):
        proc = read_server_pidfile(pidfile)
        if proc is not None:
            say(f"stopping leftover user server pid {proc.pid} ({pidfile.stem})")
            terminate_tree(proc, 5)
        pidfile.unlink(missing_ok=True)


def read_process_table(state: StateDir) -> dict:
    try:
        return json.loads(state.process_table.read_text())
    except (OSError, ValueError):
        return {}


def is_running(state: StateDir) -> bool:
    """True while some supervisor holds the state directory's lock."""
    if not state.lock_file.exists():
        return False
    fd = os.open(state.lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def down(settings: Settings, out=sys.stdout, timeout: float = 120) -> int:
    state = StateDir(settings.state_dir)
    if not is_running(state):
        print(f"Officina is not running (state directory {state.root})", file=out)
        return 1
    table = read_process_table(state)
    pid = table.get("supervisor_pid")
    if not pid:
        raise SupervisorError(f"Officina holds {state.lock_file} but its process table is unreadable")
    print(f"stopping Officina (supervisor pid {pid})", file=out, flush=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(state):
            print("Officina stopped", file=out)
            return 0
        time.sleep(0.2)
    raise SupervisorError(f"Officina (pid {pid}) did not stop within {timeout:.0f} s")


def status(settings: Settings, out=sys.stdout) -> int:
    """Print each component with its health; exit 0 only when everything is healthy."""
    state = StateDir(settings.state_dir)
    if not is_running(state):
        print(f"Officina is not running (state directory {state.root})", file=out)
        return 3
    table = read_process_table(state)
    headers = {}
    rows = []
    all_ok = table.get("state") == "running"
    for name, info in table.get("components", {}).items():
        pid = info.get("pid")
        alive = bool(pid) and psutil.pid_exists(pid)
        if name == "proxy":
            headers = {"Authorization": f"token {state.secret('proxy_auth_token')}"}
        else:
            headers = {}
        health = "down"
        if alive:
            health = probe_health(info["health_url"], headers, 3)
        all_ok = all_ok and health == "healthy"
        rows.append((name, str(pid), health, str(info.get("restarts", 0))))
    print(f"Officina {table.get('state', '?')} at {table.get('public_url')} (supervisor pid {table.get('supervisor_pid')})", file=out)
    print(f"{'component':<14}{'pid':<9}{'restarts':<10}health", file=out)
    for name, pid, health, restarts in rows:
        print(f"{name:<14}{pid:<9}{restarts:<10}{health}", file=out)
    return 0 if all_ok else 1
