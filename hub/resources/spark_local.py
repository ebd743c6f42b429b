"""Spark standalone clusters as local processes, run as the owner's own system account.

A resource is one Spark Master and `workers` Workers, each a `spark-class` JVM started in the
foreground as a child of the manager, in a session (process group) of its own, as the owner's
account with no way back to root (the same preexec a user's session gets). Everything lives in
a per-resource folder under `work_root` that the owner owns (0700): Spark's configuration,
the daemons' logs, the workers' application folders and scratch space.

Isolation: every port binds 127.0.0.1, but every local account can reach loopback, so the
daemons and the applications authenticate with a per-resource shared secret
(`spark.authenticate`): another user's session can neither register a worker nor submit an
application, which would run code as the owner. The REST submission server (unauthenticated,
and a fixed port 6066) is off, and the web UIs cannot kill applications or workers.

Restart safety: `resource.state` holds everything stop/alive/scale need (pids with their start
times, so that a reused pid is never taken for a daemon; ports; the folder), and it is filled
before any wait, so a half-started resource can always be torn down.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from ..accounts import _first_closed_folder, make_session_preexec
from .contract import BackendError, Owner, Resource

STATE_VERSION = 1
LOOPBACK = "127.0.0.1"
OPTIONS = ("worker_cores", "worker_memory")
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# conf: spark-defaults.conf (the secret); logs: the daemons' output; local: scratch
# (SPARK_LOCAL_DIRS); workers/<n>: each worker's application folders (executors' logs).
SUBFOLDERS = ("conf", "logs", "local", "workers")

# Read by the Master and the Workers from SPARK_CONF_DIR/spark-defaults.conf (0600, the
# owner's), never from the command line, where `ps` would show the secret to everyone.
DAEMON_PROPERTIES = {
    "spark.authenticate": "true",
    # Spark's REST submission server has no authentication at all.
    "spark.master.rest.enabled": "false",
    # The UIs are reachable by any local account: they must not be able to act.
    "spark.ui.killEnabled": "false",
    "spark.master.ui.decommission.allow.mode": "DENY",
    # A port taken between choosing it and binding it fails the start (with the message)
    # instead of moving silently to the next port, which the records would not know.
    "spark.port.maxRetries": "0",
}


def spark_home() -> Path:
    """The Spark distribution inside the pyspark package (bin/spark-class, jars/)."""
    try:
        import pyspark
    except ImportError:
        raise BackendError("Spark is not installed on this platform (the pyspark package is missing)") from None
    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def log_tail(path: str | Path, lines: int = 12) -> str:
    """The end of a daemon's log, to put in a message (JVM stack frames left out)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64_000))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("at ")]
    return "\n".join(kept[-lines:]) or "(empty log)"


def _process(record: dict) -> psutil.Process | None:
    """The live process a record names; None once it exited (or its pid was reused)."""
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["created"]) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError):
        return None


def _group(record: dict) -> list[psutil.Process]:
    """Every live process of a daemon's process group: the daemon and the executors and
    Python workers it started, also after the daemon itself died. A group id that was reused
    by someone else is not taken: members must be the daemon's account's, and no older."""
    members = []
    for proc in psutil.process_iter(["uids", "create_time", "status"]):
        try:
            if (os.getpgid(proc.pid) == record["pid"] and proc.info["uids"].real == record["uid"]
                    and proc.info["create_time"] >= record["created"] - 0.05
                    and proc.info["status"] != psutil.STATUS_ZOMBIE):
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _reap(pid: int) -> None:
    """Collect an exited daemon that is our child (no zombie); others are not ours to wait for."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn_as_owner(command: list[str], env: dict, *, cwd: Path, log: Path, account: pwd.struct_passwd | None,
                   children: dict, name: str, what: str) -> dict:
    """Start `command` in a session of its own as `account` (None: ours), in `cwd`, its output
    appended to `log` (opened as the owner, so the log is theirs); the record it is followed
    and stopped by (pid, start time, uid, log)."""
    enter = make_session_preexec(cwd, account)

    def preexec() -> None:
        enter()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    try:
        child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=preexec,
                                 start_new_session=True, close_fds=True)
    except (OSError, subprocess.SubprocessError) as exc:
        who = account.pw_name if account is not None else "the platform's account"
        raise BackendError(f"cannot start {what} as {who} in {cwd}: {exc}") from None
    children[child.pid] = child
    uid = account.pw_uid if account is not None else os.getuid()
    return {"name": name, "pid": child.pid, "created": psutil.Process(child.pid).create_time(), "uid": uid,
            "log": str(log)}


def wait_until_answering(server: dict, ready, timeout: float, what: str) -> None:
    """Until `ready()` (which may raise OSError/ValueError while not yet listening); a server
    that exits, or does not answer in time, is reported with the end of its log."""
    deadline = time.monotonic() + timeout
    while True:
        if _process(server) is None:
            _reap(server["pid"])
            raise BackendError(f"{what} exited while starting; the end of its log:\n{log_tail(server['log'])}")
        try:
            if ready():
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BackendError(f"{what} did not answer within {timeout:g} s; the end of its log:\n{log_tail(server['log'])}")
        time.sleep(0.25)


def resource_workdir(work_root: Path, resource_id: str, account: pwd.struct_passwd | None, what: str) -> Path:
    """A resource's own folder under `work_root` (root's, 0711), made fresh, 0700, and its
    owner's; refused when the owner's account could not reach it."""
    if "/" in resource_id or resource_id in ("", ".", ".."):
        raise BackendError(f"invalid resource id {resource_id!r}")
    work_root.mkdir(parents=True, exist_ok=True)
    work_root.chmod(0o711)
    if account is not None:
        closed = _first_closed_folder(work_root / resource_id)
        if closed is not None:
            raise BackendError(
                f"{what} {work_root} cannot be reached by {account.pw_name}: {closed} "
                f"is not traversable by other users (mode {oct(closed.stat().st_mode & 0o777)})")
    workdir = work_root / resource_id
    if workdir.exists():  # left by a start that died with the manager
        shutil.rmtree(workdir)
    workdir.mkdir(mode=0o700)
    if account is not None:
        os.chown(workdir, account.pw_uid, account.pw_gid, follow_symlinks=False)
    return workdir


def owner_account(owner: Owner, what: str) -> pwd.struct_passwd | None:
    """The account a local backend switches to for `owner`'s `what`, or None to stay in the
    platform's own (no system accounts, or already that account)."""
    if owner.account is None:
        return None
    try:
        account = pwd.getpwnam(owner.account)
    except KeyError:
        raise BackendError(f"{owner.name} has no system account {owner.account!r} yet: start a session once first") from None
    if account.pw_uid == 0:
        raise BackendError(f"refusing to run {owner.name}'s {what} as {owner.account!r}, which has uid 0")
    if account.pw_uid == os.getuid():
        return None
    return account


def terminate(records: list[dict], children: dict[int, subprocess.Popen], grace: float) -> None:
    """TERM to each daemon's whole process group, KILL to what is left after `grace`; then
    collect the daemons (our children, from `children`, or any exited one of ours)."""
    records = [r for r in records if r]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        members = [proc for record in records for proc in _group(record)]
        if not members:
            break
        for proc in members:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(members, timeout=wait)
    for record in records:
        child = children.pop(record["pid"], None)
        if child is not None:
            try:
                child.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        else:
            _reap(record["pid"])


class LocalSparkBackend:
    """The `spark` kind on local processes (see the module's docstring)."""

    kind = "spark"

    def __init__(
        self,
        work_root: str | Path,
        *,
        timeout: float = 120.0,
        java_home: str | None = None,
        daemon_memory: str = "512m",
        ui_prefix: str | None = None,
        grace: float = 5.0,
    ):
        """`work_root`: where each resource gets its folder (made root-owned, mode 0711).
        `timeout`: how long a start or scale waits for the master and the workers.
        `java_home`: the JVM to use (default: `java` on PATH). `daemon_memory`: heap of the
        Master and Worker JVMs themselves (executors get `worker_memory`).
        `ui_prefix`: the path the master's UI is served under by the hub's proxy, with `{id}`
        for the resource id (e.g. "/services/resources/spark/{id}/ui"); it turns on Spark's
        reverse proxy mode, in which the master also serves the workers' UIs under
        `<prefix>/proxy/<worker id>/`. Without it, the UI's links assume it is served at `/`.
        `grace`: seconds between TERM and KILL when stopping."""
        self.work_root = Path(work_root).absolute()
        self.timeout = timeout
        self.java_home = java_home
        self.daemon_memory = daemon_memory
        self.ui_prefix = ui_prefix
        self.grace = grace
        self._children: dict[int, subprocess.Popen] = {}

    # -- the contract ---------------------------------------------------------------------

    def start(self, resource: Resource, owner: Owner) -> None:
        cores, memory_mb = self._worker_size(resource.options)
        if resource.workers < 0:
            raise BackendError(f"cannot start {resource.workers} workers")
        account = self._account(owner)
        master_port, ui_port = free_port(), free_port()
        resource.state = {
            "version": STATE_VERSION,
            "workdir": None,  # set once made: stop() removes only what start made
            "cores": cores,
            "memory_mb": memory_mb,
            "master": None,
            "workers": [],
            "next_worker": 0,
            # The daemons' shared secret: the owner's driver needs it too (spark_session's
            # `secret`); it is for the owner's eyes only.
            "secret": secrets.token_hex(32),
        }
        resource.endpoints = {"master": f"spark://{LOOPBACK}:{master_port}", "ui": f"http://{LOOPBACK}:{ui_port}/"}
        try:
            resource.state["workdir"] = str(self._make_workdir(resource, account))
            master = self._spawn(
                resource, owner, account, "master",
                [MASTER_CLASS, "--host", LOOPBACK, "--port", str(master_port), "--webui-port", str(ui_port)],
            )
            master.update(port=master_port, ui_port=ui_port)
            resource.state["master"] = master
            self._wait(resource, "the master to start", [master], lambda: self._master_ready(resource))
            self._add_workers(resource, owner, account, resource.workers)
        except BackendError:
            self.stop(resource)
            raise
        except Exception as exc:  # anything unforeseen still leaves nothing behind
            self.stop(resource)
            raise BackendError(f"cannot start the Spark cluster: {exc}") from exc

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        if workers < 0:
            raise BackendError(f"cannot scale to {workers} workers")
        if not resource.state.get("master") or _process(resource.state["master"]) is None:
            raise BackendError("the Spark cluster is not running (its master has exited)")
        current = resource.state["workers"]
        if workers > len(current):
            self._add_workers(resource, owner, self._account(owner), workers - len(current))
        elif workers < len(current):
            removed = current[workers:]
            # Newest first; forget them only once they are gone.
            self._terminate(list(reversed(removed)))
            resource.state["workers"] = current[:workers]
            ports = {w["port"] for w in removed}
            self._wait(
                resource, f"the master to see {len(removed)} worker(s) leave", [resource.state["master"]],
                lambda: not ports & {w["port"] for w in self._alive_workers(resource)},
            )

    def stop(self, resource: Resource) -> None:
        state = resource.state or {}
        records = [w for w in reversed(state.get("workers") or [])]
        if state.get("master"):
            records.append(state["master"])
        self._terminate(records)
        state["workers"], state["master"] = [], None
        workdir = state.get("workdir")
        if workdir and Path(workdir).parent == self.work_root:
            # rmtree does not follow links the owner may have put in their folder.
            shutil.rmtree(workdir, ignore_errors=True)

    def alive(self, resource: Resource) -> tuple[bool, int, str]:
        state = resource.state or {}
        master = state.get("master")
        if not master:
            return False, 0, "the Spark cluster is not running"
        problems = []
        if _process(master) is None:
            problems.append(f"the Spark master (pid {master['pid']}) has exited: {log_tail(master['log'], 5)}")
        for worker in state.get("workers", []):
            if _process(worker) is None:
                problems.append(f"Spark worker {worker['name']} (pid {worker['pid']}) has exited")
        try:
            count = len(self._alive_workers(resource))
        except (OSError, ValueError, KeyError) as exc:
            count = 0
            problems.append(f"the Spark master does not answer at {resource.endpoints.get('ui')}: {exc}")
        if problems:
            return False, count, "; ".join(problems)
        return True, count, f"master and {count} of {len(state.get('workers', []))} workers running"

    def busy(self, resource: Resource) -> bool:
        try:
            return bool(self._status(resource).get("activeapps"))
        except (OSError, ValueError, KeyError):
            return False

    # -- processes ------------------------------------------------------------------------

    def _worker_size(self, options: dict) -> tuple[int, int]:
        unknown = sorted(set(options) - set(OPTIONS))
        missing = [name for name in OPTIONS if name not in options]
        if unknown or missing:
            raise BackendError(f"Spark options: unknown {unknown}, missing {missing}; expected exactly {list(OPTIONS)}")
        cores, memory = options["worker_cores"], options["worker_memory"]
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise BackendError(f"worker_cores must be a whole number of at least 1, not {cores!r}")
        if isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0:
            raise BackendError(f"worker_memory must be a positive number of GiB, not {memory!r}")
        return cores, max(1, round(memory * 1024))

    def _account(self, owner: Owner) -> pwd.struct_passwd | None:
        return owner_account(owner, "Spark cluster")

    def _make_workdir(self, resource: Resource, account: pwd.struct_passwd | None) -> Path:
        workdir = resource_workdir(self.work_root, resource.id, account, "Spark's work folder")
        for sub in SUBFOLDERS:
            (workdir / sub).mkdir(mode=0o700)
        properties = dict(DAEMON_PROPERTIES, **{"spark.authenticate.secret": resource.state["secret"]})
        if self.ui_prefix:
            properties["spark.ui.reverseProxy"] = "true"
            properties["spark.ui.reverseProxyUrl"] = self.ui_prefix.format(id=resource.id).rstrip("/")
        conf = workdir / "conf" / "spark-defaults.conf"
        with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.writelines(f"{key} {value}\n" for key, value in properties.items())
        if account is not None:
            for path in [workdir, conf, *(workdir / sub for sub in SUBFOLDERS)]:
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        return workdir

    def _env(self, owner: Owner, account: pwd.struct_passwd | None, workdir: Path) -> dict:
        name = account.pw_name if account is not None else pwd.getpwuid(os.getuid()).pw_name
        path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
        env = {
            "PATH": path,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "USER": name,
            "LOGNAME": name,
            "HOME": owner.home,
            "BEARER_TOKEN_FILE": owner.token_file,
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(workdir / "conf"),
            # Spark's web UIs (Jetty) bind to this address and to nothing else: without it they
            # listen on 0.0.0.0 whatever --host says (Spark 4.3's WebUI.bind).
            "SPARK_LOCAL_IP": LOOPBACK,
            "SPARK_LOCAL_DIRS": str(workdir / "local"),
            "SPARK_DAEMON_MEMORY": self.daemon_memory,
            # Executors' Python workers, when the application does not name one.
            "PYSPARK_PYTHON": sys.executable,
        }
        if self.java_home:
            env["JAVA_HOME"] = self.java_home
        return env

    def _spawn(self, resource: Resource, owner: Owner, account, name: str, arguments: list[str]) -> dict:
        workdir = Path(resource.state["workdir"])
        return spawn_as_owner([str(spark_home() / "bin" / "spark-class"), *arguments], self._env(owner, account, workdir),
                              cwd=workdir, log=workdir / "logs" / f"{name}.log", account=account,
                              children=self._children, name=name, what=f"the Spark {name}")

    def _add_workers(self, resource: Resource, owner: Owner, account, count: int) -> None:
        state = resource.state
        master_url = resource.endpoints["master"]
        new = []
        try:
            for _ in range(count):
                index = state["next_worker"]
                state["next_worker"] += 1
                port, ui_port = free_port(), free_port()
                folder = Path(state["workdir"]) / "workers" / str(index)
                arguments = [
                    WORKER_CLASS, master_url, "--host", LOOPBACK, "--port", str(port), "--webui-port", str(ui_port),
                    "--cores", str(state["cores"]), "--memory", f"{state['memory_mb']}m", "--work-dir", str(folder),
                ]
                worker = self._spawn(resource, owner, account, f"worker-{index}", arguments)
                worker.update(port=port, ui_port=ui_port)
                state["workers"].append(worker)  # recorded at once: a failed wait still stops it
                new.append(worker)
            if not new:
                return
            ports = {w["port"] for w in new}
            self._wait(
                resource, f"{len(new)} worker(s) to register with the master", [state["master"], *new],
                lambda: ports <= {w["port"] for w in self._alive_workers(resource)},
            )
        except BackendError:
            # Scaling up failed: take back what this call started, keep the rest running.
            self._terminate(new)
            state["workers"] = [w for w in state["workers"] if w not in new]
            raise

    def _wait(self, resource: Resource, what: str, watched: list[dict], ready) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            for record in watched:
                if _process(record) is None:
                    _reap(record["pid"])
                    raise BackendError(
                        f"the Spark {record['name']} exited while waiting for {what}; "
                        f"the end of its log:\n{log_tail(record['log'])}"
                    )
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass  # not answering yet
            if time.monotonic() > deadline:
                logs = "\n".join(f"-- {r['name']}:\n{log_tail(r['log'], 6)}" for r in watched)
                raise BackendError(f"timed out after {self.timeout:g} s waiting for {what}; the end of the logs:\n{logs}")
            time.sleep(0.25)

    def _terminate(self, records: list[dict]) -> None:
        terminate(records, self._children, self.grace)

    # -- the master's view ----------------------------------------------------------------

    def _status(self, resource: Resource) -> dict:
        """The master's /json/ page (workers, apps), straight, not through any HTTP proxy."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(resource.endpoints["ui"].rstrip("/") + "/json/", timeout=3) as response:
            return json.load(response)

    def _alive_workers(self, resource: Resource) -> list[dict]:
        return [w for w in self._status(resource).get("workers", []) if w.get("state") == "ALIVE"]

    def _master_ready(self, resource: Resource) -> bool:
        port = resource.state["master"]["port"]
        with socket.create_connection((LOOPBACK, port), timeout=2):
            pass
        return self._status(resource).get("status") == "ALIVE"
