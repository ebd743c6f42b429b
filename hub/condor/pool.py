"""Officina's embedded HTCondor pool: a one-node pool in a Debian 13 root, run by the platform.

Debian 12 has no HTCondor, so the daemons come from trixie's `minicondor` in a root made by
`scripts/condor-root.sh`. `CondorPool.start()` starts `condor_master -f` in that root, in a
mount namespace of its own: proc, sys, dev, dev/pts, a tmpfs on dev/shm, the users' homes (at
the same path as on the host, so a submit directory is the same on both sides), the pool's
state and the platform's Python (for Dask workers) are mounted there and nowhere else. The
mounts live exactly as long as the processes of that namespace: a crash of the platform can
leave the master running (the next start finds it by its pid file and ends it) but never a
mount on the host. The host's /proc/mounts is still checked, for what an older run or a killed
`condor-root.sh` may have left.

The pool's signing key is made once in the state directory (0600) and is only ever seen by
processes in the root; tokens are minted there (`officina.hub.condor.tokens`).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ..accounts import AccountError, ensure_daemon_account, system_account_name
from . import config as cfg

MASTER = "/usr/sbin/condor_master"
# The daemons' account on the host. Trixie's `condor` is uid 100, which on the host is some
# other account (messagebus here): the root's `condor` entry is given this account's ids so
# that no host account owns the pool's processes and spool. The underscore keeps the name out
# of `officina-<user>`'s space.
DAEMON_ACCOUNT = "officina_htcondor"
# Entries the platform copies into the root's /etc/passwd and /etc/group carry this marker.
_ROOT_ENTRY_TAG = "Officina session account"
_ENV_IN_ROOT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "CONDOR_CONFIG": "/etc/condor/condor_config"}

# The namespace's setup: the mounts, then the master in the root, in the same process (so the
# pid the platform holds is the master's). Paths arrive as arguments, never inside the text.
_NAMESPACE_SCRIPT = r"""
set -eu
root=$1; owner=$2; shift 2
mount -t proc proc "$root/proc"
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t tmpfs -o mode=1777,size=256m,nosuid,nodev tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=0755,size=16m,nosuid,nodev tmpfs "$root/run/condor"
chown "$owner" "$root/run/condor"
while [ "$1" != "--" ]; do
  mount --bind "$2" "$root$3"
  if [ "$1" = ro ]; then mount -o remount,bind,ro "$root$3"; fi
  shift 3
done
shift
exec chroot "$root" /usr/bin/env -i "$@"
"""


class CondorError(Exception):
    """The embedded pool cannot start, stop or be used; the message says what to do."""


def host_can_run_condor(root: Path) -> tuple[bool, str]:
    """Whether this host can run the embedded pool, and if not, what to do about it."""
    root = Path(root)
    if os.geteuid() != 0:
        return False, "the embedded HTCondor pool needs root (it mounts and chroots); run `officina up` as root"
    for tool in ("unshare", "nsenter", "chroot", "mount"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is missing: apt-get install util-linux coreutils mount"
    if not os.access(root / MASTER.lstrip("/"), os.X_OK):
        return False, f"no HTCondor root at {root}: run `scripts/condor-root.sh {root}` (needs debootstrap)"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "chroot", str(root), "/bin/true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return False, f"cannot chroot into {root} in a mount namespace: {probe.stderr.strip() or probe.returncode}"
    return True, "ok"


@dataclass
class PoolTimings:
    master_started: float = 0.0
    schedd_visible: float = 0.0
    slot_visible: float = 0.0


@dataclass
class CondorPool:
    """One embedded pool. `root`: the trixie root; `state_dir`: the pool's own state (key,
    spool, logs, client files; created 0711); `homes`: the folder of the users' homes, shared
    into the root at the same path; `port`: the collector's (and every daemon's) port on
    127.0.0.1, chosen free by the caller."""

    root: Path
    state_dir: Path
    homes: Path
    port: int
    cpus: int = 2
    memory_mb: int = 2048
    ready_timeout: float = 60.0
    timings: PoolTimings = field(default_factory=PoolTimings)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _lock_fd: int | None = field(default=None, init=False, repr=False)
    _mutex: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self.state_dir = Path(self.state_dir).resolve()
        self.homes = Path(self.homes).resolve()

    # Where things are, on the host.
    keys_dir = property(lambda self: self.state_dir / "keys")
    local_dir = property(lambda self: self.state_dir / "local")
    run_dir = property(lambda self: self.state_dir / "run")
    client_dir = property(lambda self: self.state_dir / "client")
    client_config = property(lambda self: self.state_dir / "client" / "condor_config")
    client_bin = property(lambda self: self.state_dir / "client" / "bin")
    worker_python = property(lambda self: self.state_dir / "client" / "python" / "bin" / "python")
    pid_file = property(lambda self: self.state_dir / "run" / "master.json")
    users_file = property(lambda self: self.state_dir / "users.json")
    workers_file = property(lambda self: self.state_dir / "workers.json")
    shape_file = property(lambda self: self.state_dir / "run" / "shape.json")
    config_lock = property(lambda self: self.state_dir / "run" / "config.lock")
    mountpoints_file = property(lambda self: self.state_dir / "run" / "mountpoints.json")
    master_log = property(lambda self: self.state_dir / "local" / "log" / "MasterLog")
    address = property(lambda self: f"127.0.0.1:{self.port}")

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PoolTimings:
        ok, reason = host_can_run_condor(self.root)
        if not ok:
            raise CondorError(reason)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_locks()
        try:
            self._prepare_state()
            _write_json(self.shape_file, {"cpus": self.cpus, "memory_mb": self.memory_mb}, 0o600)
            self.reap_stale()
            sweep_mounts(self.root)
            self._write_root_files()
            self._write_client_files()
            t0 = time.monotonic()
            self._spawn_master()
            self.timings = PoolTimings(master_started=time.monotonic() - t0)
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        return self.timings

    def stop(self, timeout: float = 30.0) -> None:
        """End the master, its daemons and jobs (all of the pool's namespace) and check that
        no mount of the root is left on the host. Safe to call at any time, twice, or after
        a crash of the process that started the pool."""
        try:
            record = _read_json(self.pid_file)
            if self._proc is not None:
                record = record or {"pid": self._proc.pid, "mntns": None}
            if record:
                _end_namespace(record, timeout, self.root)
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                self._proc = None
            self.pid_file.unlink(missing_ok=True)
            sweep_mounts(self.root)
            self._remove_mountpoints()
        finally:
            self._release_locks()

    def reap_stale(self) -> None:
        """A master left by a crashed platform (and its daemons and jobs) is ended."""
        record = _read_json(self.pid_file)
        if record:
            _end_namespace(record, 30.0, self.root)
            self.pid_file.unlink(missing_ok=True)
        self._remove_mountpoints()

    @property
    def running(self) -> bool:
        record = _read_json(self.pid_file)
        return bool(record) and _live_master(record) is not None

    # ---------------------------------------------------------------- users

    def add_user(self, hub_username: str) -> pwd.struct_passwd:
        """Give a hub user (whose system account exists: `accounts.ensure_account`) a schedd
        of their own and their account inside the root; idempotent. Returns the account."""
        with self._mutex, self._config_locked():
            return self._add_user(hub_username)

    def _add_user(self, hub_username: str) -> pwd.struct_passwd:
        account = system_account_name(hub_username)
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            raise CondorError(f"hub user {hub_username!r} has no system account {account!r} yet") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise CondorError(f"account {account!r} has uid or gid 0; refusing it")
        users = self._users()
        changed = account not in users
        if changed:
            _write_json(self.users_file, users + [account], 0o600)
        self._copy_accounts()
        if changed:
            self._prepare_schedd_dirs(account)
            self._write_pool_config()
            if self.running:
                self._reconfig()
                self._wait_for(lambda: account in self._schedd_names(), f"the schedd of {account}")
        return entry

    # ---------------------------------------------------------------- users' execute nodes

    def set_workers(self, resource: str, hub_username: str, count: int, cpus: int, memory_mb: int,
                    wait: bool = True) -> list[str]:
        """Make resource `resource` have `count` execute nodes (startds) for the user, each with
        `cpus` and `memory_mb`; 0 removes them. Kept in workers.json: a restarted pool starts
        them again. With the pool down only the file changes. Returns the startds' names."""
        with self._mutex, self._config_locked():
            account = system_account_name(hub_username) if count else ""
            if count:
                self._add_user(hub_username)
            table = {k: v for k, v in self._worker_table().items() if k != resource}
            if count:
                table[resource] = {"account": account, "count": count, "cpus": cpus, "memory_mb": memory_mb}
            _write_json(self.workers_file, table, 0o600)
            workers = [w for w in self._workers() if w.resource == resource]
            for worker in workers:
                self._prepare_execute_dirs(worker)
            self._write_pool_config()
            if self.running:
                self._reconfig()
        names = sorted(w.name for w in workers)
        if wait and self.running:
            self._wait_for(lambda: sorted(self.worker_names(resource)) == names,
                           f"{count} execute node{'s' if count != 1 else ''} of {resource}")
        return names

    def worker_names(self, resource: str) -> list[str]:
        """The resource's execute nodes the collector knows now."""
        return [ad["Startd"] for ad in self.worker_slots(resource)
                if ad.get("SlotType") in ("Partitionable", "Static")]

    def worker_slots(self, resource: str) -> list[dict]:
        """The collector's slot ads of a resource's nodes: Name (`slot1@<startd>`), Startd (the
        startd's name), SlotType, State, Cpus, Memory."""
        if not re.fullmatch(r"[a-z0-9]+", resource):
            raise CondorError(f"not a resource id: {resource!r}")
        r = self.run_in_root(["condor_status", "-constraint", f'OfficinaResource == "{resource}"',
                              "-af", "Name", "SlotType", "State", "Cpus", "Memory"], timeout=20)
        if r.returncode != 0:
            return []
        slots = []
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 5:
                slots.append({"Name": parts[0], "Startd": parts[0].split("@", 1)[-1], "SlotType": parts[1],
                              "State": parts[2], "Cpus": int(parts[3]), "Memory": int(parts[4])})
        return slots

    def worker_resources(self) -> dict[str, dict]:
        """resource id -> {account, count, cpus, memory_mb}, as kept in workers.json."""
        return self._worker_table()

    def _worker_table(self) -> dict[str, dict]:
        return _read_json(self.workers_file) or {}

    def _workers(self) -> list[cfg.WorkerStartd]:
        return [cfg.WorkerStartd(resource=rid, index=i, account=w["account"], cpus=w["cpus"], memory_mb=w["memory_mb"])
                for rid, w in sorted(self._worker_table().items()) for i in range(1, w["count"] + 1)]

    def _prepare_execute_dirs(self, worker: cfg.WorkerStartd) -> None:
        condor_uid, condor_gid = self._root_condor_ids()
        for rel in cfg.worker_execute_dirs(worker):
            folder = self.local_dir / rel
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, condor_uid, condor_gid)
            os.chmod(folder, 0o755)

    @contextlib.contextmanager
    def _config_locked(self):
        """The hub (a user's first session) and the resource manager (workers) both rewrite
        the pool's configuration; one at a time, across processes."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.config_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def user_schedd_name(self, hub_username: str) -> str:
        return cfg.schedd_name(system_account_name(hub_username))

    def client_env(self, home: Path) -> dict[str, str]:
        """What a user's session needs to use the pool: the client config, its own token
        directory, and the condor_submit/condor_rm/condor_q commands (for dask-jobqueue)."""
        return {
            "CONDOR_CONFIG": str(self.client_config),
            "_CONDOR_SEC_TOKEN_DIRECTORY": str(Path(home) / ".condor" / "tokens.d"),
            "OFFICINA_CONDOR_PYTHON": str(self.worker_python),
            "PATH": f"{self.client_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    # ---------------------------------------------------------------- running things in the root

    def run_in_root(self, argv: list[str], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a command in the root as root, with the pool's key and config: inside the
        running pool's namespace, or in a one-off namespace when the pool is down."""
        record = _read_json(self.pid_file)
        master = _live_master(record) if record else None
        full_env = dict(_ENV_IN_ROOT, **(env or {}))
        env_args = [f"{k}={v}" for k, v in full_env.items()]
        if master is not None:
            cmd = ["nsenter", "--target", str(master.pid), "--mount", "--", "chroot", str(self.root), "/usr/bin/env", "-i", *env_args, *argv]
        else:
            # The pool's security settings even in a root it has never started in.
            env_args += [
                f"_CONDOR_TRUST_DOMAIN={cfg.TRUST_DOMAIN}",
                f"_CONDOR_SEC_PASSWORD_DIRECTORY={cfg.IN_ROOT_KEYS}",
                f"_CONDOR_SEC_TOKEN_POOL_SIGNING_KEY_FILE={cfg.IN_ROOT_KEYS}/{cfg.POOL_KEY_NAME}",
            ]
            (self.root / cfg.IN_ROOT_KEYS.lstrip("/")).mkdir(mode=0o700, parents=True, exist_ok=True)
            script = 'set -eu; root=$1; keys=$2; shift 2; mount --bind "$keys" "$root/etc/condor/passwords.d"; mount --bind /dev "$root/dev"; exec chroot "$root" /usr/bin/env -i "$@"'
            cmd = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh", str(self.root), str(self.keys_dir), *env_args, *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})

    # ---------------------------------------------------------------- internals

    def _prepare_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o711)
        for folder, mode in ((self.keys_dir, 0o700), (self.run_dir, 0o700), (self.local_dir, 0o755), (self.client_dir, 0o755), (self.client_bin, 0o755)):
            folder.mkdir(exist_ok=True)
            os.chmod(folder, mode)
        self._ensure_key()
        self._align_condor_account()
        condor_uid, condor_gid = self._root_condor_ids()
        for name, mode in (("log", 0o755), ("spool", 0o755), ("execute", 0o755), ("lock", 0o755), ("cred_dir", 0o700), ("schedd", 0o755)):
            folder = self.local_dir / name
            folder.mkdir(exist_ok=True)
            os.chown(folder, condor_uid, condor_gid)
            os.chmod(folder, mode)
        for account in self._users():
            self._prepare_schedd_dirs(account)
        for worker in self._workers():
            self._prepare_execute_dirs(worker)

    def _ensure_key(self) -> None:
        """The pool's signing key, made once: HTCondor stores it XOR-scrambled (`simple_scramble`);
        the key is a random hex string so that it never holds a NUL byte."""
        key = self.keys_dir / cfg.POOL_KEY_NAME
        if key.exists():
            os.chmod(key, 0o600)
            return
        secret = secrets.token_hex(32).encode()
        scrambled = bytes(b ^ (0xDE, 0xAD, 0xBE, 0xEF)[i % 4] for i, b in enumerate(secret))
        tmp = key.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(scrambled)
        os.replace(tmp, key)

    def _align_condor_account(self) -> None:
        try:
            host = ensure_daemon_account(DAEMON_ACCOUNT, "Officina HTCondor daemons")
        except AccountError as exc:
            raise CondorError(str(exc)) from None
        uid, gid = str(host.pw_uid), str(host.pw_gid)
        for name, id_field, new_id, other_id in (("passwd", 2, uid, gid), ("group", 2, gid, None)):
            path = self.root / "etc" / name
            lines = path.read_text().splitlines()
            out = []
            for line in lines:
                parts = line.split(":")
                if parts[0] == "condor":
                    parts[id_field] = new_id
                    if other_id is not None:
                        parts[3] = other_id
                elif len(parts) > id_field and parts[id_field] == new_id and _ROOT_ENTRY_TAG not in line:
                    raise CondorError(f"{path} has {parts[0]!r} with id {new_id}, the host's {DAEMON_ACCOUNT}; remake the root")
                out.append(":".join(parts))
            if out != lines:
                _write_text(path, "\n".join(out) + "\n", 0o644)

    def _root_condor_ids(self) -> tuple[int, int]:
        for line in (self.root / "etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == "condor":
                return int(parts[2]), int(parts[3])
        raise CondorError(f"{self.root} has no condor account: remake it with scripts/condor-root.sh")

    def _prepare_schedd_dirs(self, account: str) -> None:
        condor_uid, condor_gid = self._root_condor_ids()
        for rel in cfg.user_schedd_dirs(account):
            folder = self.local_dir / rel
            folder.mkdir(exist_ok=True)
            os.chown(folder, condor_uid, condor_gid)
            os.chmod(folder, 0o755)

    def _take_locks(self) -> None:
        """One pool per state directory and per root (the root holds the pool's config)."""
        fd = os.open(self.root / ".officina-pool.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CondorError(f"another Officina pool is running in {self.root}") from None
        self._lock_fd = fd

    def _release_locks(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _users(self) -> list[str]:
        """The accounts that have a schedd (kept across restarts)."""
        return _read_json(self.users_file) or []

    def _write_pool_config(self) -> None:
        # The shape of the pool's own slot is the starting process's (`run --cpus`): the hub
        # and the resource manager rewrite this file too, with CondorPool objects of their own.
        shape = _read_json(self.shape_file) or {"cpus": self.cpus, "memory_mb": self.memory_mb}
        settings = cfg.PoolSettings(port=self.port, cpus=shape["cpus"], memory_mb=shape["memory_mb"],
                                    accounts=tuple(self._users()), workers=tuple(self._workers()))
        _write_text(self.root / cfg.CONFIG_FILE.lstrip("/"), cfg.render_pool_config(settings), 0o644)

    def _write_root_files(self) -> None:
        self._write_pool_config()
        # The host name must resolve inside the root, to loopback.
        names = " ".join(dict.fromkeys([socket.gethostname(), socket.getfqdn()]))
        _write_text(self.root / "etc/hosts", f"127.0.0.1\tlocalhost {names}\n", 0o644)
        (self.root / "run/condor").mkdir(parents=True, exist_ok=True)
        (self.root / cfg.IN_ROOT_KEYS.lstrip("/")).mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / cfg.IN_ROOT_LOCAL.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self._copy_accounts()

    def _copy_accounts(self) -> None:
        """The root's /etc/passwd and /etc/group get the registered users' accounts with the
        host's uid and gid (the starter runs jobs as the Owner's account, looked up there)."""
        accounts = []
        for account in self._users():
            try:
                accounts.append(pwd.getpwnam(account))
            except KeyError:
                continue  # removed on the host: removed from the root too
        passwd = [l for l in (self.root / "etc/passwd").read_text().splitlines() if _ROOT_ENTRY_TAG not in l]
        names = {l.split(":")[0] for l in passwd}
        group_lines = (self.root / "etc/group").read_text().splitlines()
        tagged = set()
        for e in accounts:
            if e.pw_name in names:
                raise CondorError(f"the root already has an account {e.pw_name!r} of its own; refusing to shadow it")
            passwd.append(f"{e.pw_name}:x:{e.pw_uid}:{e.pw_gid}:{_ROOT_ENTRY_TAG}:{e.pw_dir}:/bin/sh")
            tagged.add(e.pw_gid)
        # Groups: ours are recognised by gid range only through the tag file kept beside.
        tag_file = self.root / "etc/officina-groups"
        ours = set(tag_file.read_text().split()) if tag_file.exists() else set()
        group_lines = [l for l in group_lines if l.split(":")[0] not in ours]
        new_ours = []
        for gid in sorted(tagged):
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                continue
            if any(l.split(":")[0] == name for l in group_lines):
                continue
            group_lines.append(f"{name}:x:{gid}:")
            new_ours.append(name)
        _write_text(self.root / "etc/passwd", "\n".join(passwd) + "\n", 0o644)
        _write_text(self.root / "etc/group", "\n".join(group_lines) + "\n", 0o644)
        _write_text(tag_file, "\n".join(new_ours) + "\n", 0o644)

    def _write_client_files(self) -> None:
        _write_text(self.client_config, cfg.render_client_config(self.port), 0o644)
        launcher = f"#!{sys.executable}\n# Officina: {{name}} on the embedded pool, through the htcondor2 bindings.\nfrom officina.hub.condor.cli import main\nimport sys\nsys.exit(main({{name!r}}, sys.argv[1:]))\n"
        for name in ("condor_submit", "condor_rm", "condor_q"):
            _write_text(self.client_bin / name, launcher.format(name=name), 0o755)
        self._write_worker_python()

    def _write_worker_python(self) -> None:
        """A virtual environment on the platform's site-packages whose interpreter link does not
        go through /usr/bin/python3 (which in the trixie root is Python 3.13): jobs such as
        Dask workers run it inside the root with the platform's Python and packages."""
        env = self.client_dir / "python"
        base = Path(sys._base_executable).resolve()  # type: ignore[attr-defined]
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        (env / "bin").mkdir(parents=True, exist_ok=True)
        (env / "lib").mkdir(exist_ok=True)
        for link, target in (
            (env / "bin" / f"python{version}", base),
            (env / "bin" / "python", Path(f"python{version}")),
            (env / "lib" / f"python{version}", Path(sysconfig.get_paths()["purelib"]).parent),
        ):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        _write_text(
            env / "pyvenv.cfg",
            f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {sys.version.split()[0]}\n",
            0o644,
        )

    def _shared_paths(self) -> list[tuple[str, Path]]:
        """Host paths the root sees at the same path: homes (read-write), the client files and
        the platform's Python (read-only)."""
        base = Path(sys._base_executable).resolve()  # type: ignore[attr-defined]
        paths = [
            ("rw", self.homes),
            ("ro", self.client_dir),
            ("ro", Path(sysconfig.get_paths()["stdlib"]).resolve()),
            ("ro", base),
        ]
        if sys.prefix != sys.base_prefix:
            paths.append(("ro", Path(sys.prefix).resolve()))
        return paths

    def _mounts(self) -> list[tuple[str, Path, Path]]:
        """(mode, host path, path in the root) for every bind mount; their mount points are
        made in the root (folders, or empty files for a file)."""
        triples = [
            ("ro", self.keys_dir, Path(cfg.IN_ROOT_KEYS)),
            ("rw", self.local_dir, Path(cfg.IN_ROOT_LOCAL)),
            *((mode, p, p) for mode, p in self._shared_paths()),
        ]
        made = set(_read_json(self.mountpoints_file) or [])
        for _mode, source, target in triples:
            inside = self.root / str(target).lstrip("/")
            first_missing = next((p for p in [*reversed(inside.parents), inside] if not p.exists()), None)
            # Folders made here are removed at stop; an empty file made for a file stays.
            if first_missing is not None and (source.is_dir() or first_missing != inside):
                made.add(str(first_missing))
            if source.is_dir():
                inside.mkdir(parents=True, exist_ok=True)
            else:
                inside.parent.mkdir(parents=True, exist_ok=True)
                if not inside.exists():
                    inside.touch()
        _write_json(self.mountpoints_file, sorted(made), 0o600)
        return triples

    def _remove_mountpoints(self) -> None:
        """Folders the pool made in the root as mount points (for a state directory under /tmp,
        say) are removed once it is down, if empty: rmdir never removes a file."""
        for top in _read_json(self.mountpoints_file) or []:
            top = Path(top)
            if top == self.root or not top.is_relative_to(self.root) or mounts_under(top):
                continue
            for folder, _dirs, _files in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(folder)
                except OSError:
                    pass
        self.mountpoints_file.unlink(missing_ok=True)

    def _spawn_master(self) -> None:
        condor_uid, condor_gid = self._root_condor_ids()
        mount_args = [str(x) for triple in self._mounts() for x in triple]
        env_args = [f"{k}={v}" for k, v in _ENV_IN_ROOT.items()]
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", _NAMESPACE_SCRIPT, "sh", str(self.root), f"{condor_uid}:{condor_gid}",
            *mount_args, "--", *env_args, MASTER, "-f",
        ]
        out = open(self.local_dir / "log" / "master.out", "ab")
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        finally:
            out.close()
        # unshare, sh and chroot exec one another: the pid is the master's once it has run.
        deadline = time.monotonic() + 10
        mntns = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise CondorError(f"condor_master exited at once ({self._proc.returncode}): {_tail(self.local_dir / 'log' / 'master.out')}")
            try:
                if psutil.Process(self._proc.pid).name() == "condor_master":
                    mntns = os.readlink(f"/proc/{self._proc.pid}/ns/mnt")
                    break
            except (psutil.NoSuchProcess, OSError):
                pass
            time.sleep(0.02)
        if mntns is None:
            raise CondorError("condor_master did not start within 10 s")
        record = {"pid": self._proc.pid, "create_time": psutil.Process(self._proc.pid).create_time(), "mntns": mntns}
        _write_json(self.pid_file, record, 0o600)

    def _schedd_names(self) -> list[str]:
        r = self.run_in_root(["condor_status", "-schedd", "-af", "Name"], timeout=20)
        return [n.split("@")[0] for n in r.stdout.split()] if r.returncode == 0 else []

    def _slot_count(self) -> int:
        r = self.run_in_root(["condor_status", "-af", "Name"], timeout=20)
        return len(r.stdout.split()) if r.returncode == 0 else 0

    def _wait_ready(self, t0: float) -> None:
        base = cfg.BASE_SCHEDD_NAME.split("@")[0]
        self._wait_for(lambda: base in self._schedd_names(), "the pool's schedd")
        self.timings.schedd_visible = time.monotonic() - t0
        self._wait_for(lambda: self._slot_count() > 0, "a startd slot")
        self.timings.slot_visible = time.monotonic() - t0
        for account in self._users():
            self._wait_for(lambda: account in self._schedd_names(), f"the schedd of {account}")
        # Users' execute nodes kept from before a restart come back with the pool.
        for resource in self._worker_table():
            names = sorted(w.name for w in self._workers() if w.resource == resource)
            self._wait_for(lambda: sorted(self.worker_names(resource)) == names, f"the execute nodes of {resource}")

    def _wait_for(self, predicate, what: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise CondorError(f"condor_master exited ({self._proc.returncode}) before {what} was up: {_tail(self.master_log)}")
            if predicate():
                return
            time.sleep(0.2)
        raise CondorError(f"{what} did not appear within {self.ready_timeout:.0f} s; see {self.local_dir / 'log'}")

    def _reconfig(self) -> None:
        """SIGHUP makes condor_master re-read its config and start daemons new to DAEMON_LIST."""
        record = _read_json(self.pid_file)
        master = _live_master(record) if record else None
        if master is None:
            raise CondorError("the pool is not running")
        master.send_signal(signal.SIGHUP)


# -------------------------------------------------------------------- process and mount helpers


def _live_master(record: dict) -> psutil.Process | None:
    try:
        proc = psutil.Process(record["pid"])
        if record.get("create_time") and abs(proc.create_time() - record["create_time"]) > 0.05:
            return None
        return proc
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return None


def _namespace_members(mntns: str, root: Path) -> list[psutil.Process]:
    """Processes in the pool's mount namespace and chrooted in its root: both, because a
    namespace's inode number can be reused by another namespace once the pool's is gone."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/mnt") == mntns and os.readlink(f"/proc/{proc.pid}/root") == str(root):
                members.append(proc)
        except OSError:
            continue
    return members


def _end_namespace(record: dict, timeout: float, root: Path) -> None:
    """SIGTERM to the master (it shuts its daemons and jobs down), then SIGKILL to whatever is
    left in its mount namespace; when the last member is gone the kernel drops the mounts."""
    master = _live_master(record)
    mntns = record.get("mntns")
    if master is not None:
        try:
            mntns = mntns or os.readlink(f"/proc/{master.pid}/ns/mnt")
            master.send_signal(signal.SIGTERM)
            master.wait(timeout)
        except psutil.TimeoutExpired:
            master.kill()
        except (psutil.NoSuchProcess, OSError):
            pass
    if not mntns or mntns == os.readlink("/proc/self/ns/mnt"):
        return
    deadline = time.monotonic() + 10
    while True:
        members = _namespace_members(mntns, root)
        if not members:
            return
        for proc in members:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if time.monotonic() > deadline:
            raise CondorError(f"processes of the pool are left after SIGKILL: {[p.pid for p in members]}")
        psutil.wait_procs(members, timeout=2)


def mounts_under(root: Path) -> list[str]:
    """Mount points under `root` in this process's mount namespace (the host's)."""
    prefix = str(Path(root).resolve())
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            target = line.split()[1].encode().decode("unicode_escape")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return found


def sweep_mounts(root: Path) -> None:
    """Unmount anything left under the root on the host (deepest first)."""
    for target in sorted(mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    left = mounts_under(root)
    if left:
        raise CondorError(f"cannot remove mounts under {root}: {left}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data, mode: int) -> None:
    _write_text(path, json.dumps(data), mode)


def _write_text(path: Path, text: str, mode: int) -> None:
    """Atomic replace, so a running daemon never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
