"""Per-user system accounts for sessions on a shared machine, and the user-server pid files.

Run as root, each hub user's session runs as an unprivileged system account of its own,
created at first login. Account names are made by `system_account_name`, which never maps two
hub users to one account (kubespawner's slug lesson) and never yields an existing system
account such as `root`: every name starts with `officina-`, and an account that exists without
Officina's marker in its comment field is refused rather than taken over.
"""

from __future__ import annotations

import ctypes
import grp
import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import psutil

ACCOUNT_PREFIX = "officina-"
_MARKER = "Officina session account for hub user "
_SAFE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_PR_SET_NO_NEW_PRIVS = 38


class AccountError(Exception):
    """A system account cannot be made or used; the message says why."""


def system_account_name(hub_username: str) -> str:
    """`officina-<name>` when the name is already safe, else a slug plus a hash of the name.

    Safe names never contain `--`, hashed ones always do, so the two kinds cannot collide;
    the result fits the 32-character limit of useradd.
    """
    if _SAFE.match(hub_username) and "--" not in hub_username:
        return ACCOUNT_PREFIX + hub_username
    slug = re.sub(r"[^a-z0-9]+", "-", hub_username.lower()).strip("-")[:12] or "user"
    digest = hashlib.sha256(hub_username.encode()).hexdigest()[:8]
    return f"{ACCOUNT_PREFIX}{slug}--{digest}"


def ensure_account(hub_username: str, home: Path) -> pwd.struct_passwd:
    """Create the user's account and private home on first login; reuse it afterwards."""
    name = system_account_name(hub_username)
    comment = _MARKER + hub_username
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            [
                "useradd", "--system", "--user-group", "--no-create-home", "--no-log-init",
                "--home-dir", str(home), "--shell", "/bin/bash", "--comment", comment, name,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode not in (0, 9):  # 9: created meanwhile by a concurrent spawn
            raise AccountError(f"cannot create system account {name!r}: {result.stderr.strip()}")
        entry = pwd.getpwnam(name)
    if entry.pw_gecos != comment:
        raise AccountError(
            f"system account {name!r} exists but was not created by Officina for {hub_username!r}; refusing to use it"
        )
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise AccountError(f"system account {name!r} has uid or gid 0; refusing to use it")
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return entry


def ensure_daemon_account(name: str, comment: str) -> pwd.struct_passwd:
    """A system account for platform daemons (no home, no login shell), created the first
    time; AccountError says why it cannot be."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--comment", comment, name],
            capture_output=True, text=True,
        )
        if result.returncode not in (0, 9):  # 9: created meanwhile
            raise AccountError(f"cannot create the account {name!r}: {result.stderr.strip()}")
        return pwd.getpwnam(name)


def make_session_preexec(home: Path, account: pwd.struct_passwd | None):
    """What the forked child runs before exec: drop to the account, and never regain root.

    PR_SET_NO_NEW_PRIVS makes setuid binaries (su, sudo, passwd) unable to raise privileges
    for the session and everything it starts, terminals included.
    """

    def preexec() -> None:
        if account is not None:
            os.initgroups(account.pw_name, account.pw_gid)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        os.umask(0o077)
        os.chdir(home)

    return preexec


def _first_closed_folder(path: Path) -> Path | None:
    """The first folder on the way to `path` that other accounts cannot traverse."""
    for folder in reversed(path.parents):
        if folder.exists() and not folder.stat().st_mode & 0o001:
            return folder
    return None


def check_reachable_by_other_accounts(state_dir: Path) -> str | None:
    """Sessions as other accounts must be able to run this Python, import Officina and
    reach their homes under the state directory.

    A checkout under /root (mode 0700), or a state directory under pytest's or a user's
    private temporary folder, are common ways to break this; say so before anyone logs in
    instead of failing at the first spawn.
    """
    import officina.lab

    paths = [Path(sys.executable), Path(sys.executable).resolve(), Path(officina.lab.__file__).resolve()]
    for path in paths:
        folder = _first_closed_folder(path)
        if folder is not None:
            return (
                f"sessions run as per-user accounts, which cannot reach {path}: {folder} is not "
                f"traversable by other users (mode {oct(folder.stat().st_mode & 0o777)}). Install "
                "Officina somewhere others can read (e.g. /opt or /srv), or set "
                "sessions.run_as: platform-account"
            )
        if not path.stat().st_mode & 0o004:
            return f"sessions run as per-user accounts, which cannot read {path} (mode {oct(path.stat().st_mode & 0o777)})"
    # The state directory and homes/ are opened (0711) at start; the folders above must be.
    state_dir = Path(state_dir).resolve()
    folder = _first_closed_folder(state_dir)
    if folder is not None:
        return (
            f"state_dir: per-user accounts cannot reach their homes under {state_dir}: {folder} "
            f"is not traversable by other users (mode {oct(folder.stat().st_mode & 0o777)}). "
            "Choose a state directory whose parent folders others may traverse (mode 711 or 755)"
        )
    return None


def write_server_pidfile(folder: Path, key: str, pid: int) -> None:
    proc = psutil.Process(pid)
    record = {"pid": pid, "create_time": proc.create_time()}
    path = folder / f"{key}.pid"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)


def read_server_pidfile(path: Path) -> psutil.Process | None:
    """The live process a pid file names, or None; a reused pid is never mistaken for it."""
    try:
        record = json.loads(path.read_text())
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["create_time"]) > 0.01:
            return None
        return proc
    except (OSError, ValueError, KeyError, psutil.NoSuchProcess):
        return None


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
