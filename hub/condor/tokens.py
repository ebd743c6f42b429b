"""IDTOKENS for hub users, minted by the platform with the pool's signing key.

A token names the user's system account, `officina-<user>@officina` (see `config` for why the
platform, not the schedd, maps the hub user to the account), may only READ and WRITE (query, submit, remove: never ADVERTISE, DAEMON or ADMINISTRATOR), and
expires. It is made by `condor_token_create` inside the root, the one place the key is
readable: the htcondor2 bindings (PyPI `htcondor`) have no call that signs a token with a
local key (the v1 `htcondor.Token`/`TokenRequest` are not in htcondor2, and those only ask a
daemon for one). The token reaches nothing but the command's stdout and the user's file:
never an argv, an environment or a log.

The file is `<home>/.condor/tokens.d/officina`, 0600 and owned by the user's account, where
HTCondor's clients look by default (`SEC_TOKEN_DIRECTORY`, `_CONDOR_SEC_TOKEN_DIRECTORY`).
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from . import config as cfg
from .pool import CondorError, CondorPool

TOKEN_FILE_NAME = "officina"
DEFAULT_LIFETIME_S = 24 * 3600
AUTHZ = ("READ", "WRITE")


@dataclass(frozen=True)
class MintedToken:
    path: Path
    identity: str
    account: str
    lifetime_s: int


def mint_token(pool: CondorPool, hub_username: str, home: Path, lifetime_s: int = DEFAULT_LIFETIME_S) -> MintedToken:
    """Mint a token for a hub user whose account exists, give them their schedd, and write the
    token into their home. Returns where it is and whom it names (never the token itself)."""
    if not 60 <= lifetime_s <= 30 * 24 * 3600:
        raise CondorError(f"token lifetime must be between 60 s and 30 days, not {lifetime_s} s")
    account = pool.add_user(hub_username)
    identity = cfg.token_subject(account.pw_name)
    token = create_token(pool, identity, lifetime_s)
    path = write_user_file(Path(home), (".condor", "tokens.d", TOKEN_FILE_NAME), token + "\n", account)
    return MintedToken(path=path, identity=identity, account=account.pw_name, lifetime_s=lifetime_s)


def create_token(pool: CondorPool, identity: str, lifetime_s: int) -> str:
    argv = ["condor_token_create", "-identity", identity, "-lifetime", str(int(lifetime_s)), "-key", cfg.POOL_KEY_NAME]
    for authz in AUTHZ:
        argv += ["-authz", authz]
    result = pool.run_in_root(argv, timeout=30)
    token = result.stdout.strip()
    if result.returncode != 0 or token.count(".") != 2:
        raise CondorError(f"condor_token_create failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return token


def write_user_file(home: Path, parts: tuple[str, ...], text: str, account: pwd.struct_passwd) -> Path:
    """Write `home/parts...` as root on the user's behalf without following anything the user
    may have planted (a symlinked .condor, a hard link in tokens.d): every folder is opened
    with O_NOFOLLOW and must belong to the account; the file is written under a fresh name and
    renamed into place."""
    try:
        return _write_user_file(home, parts, text, account)
    except OSError as e:
        raise CondorError(f"not writing a token into {home}: {e.strerror} ({e.filename or '/'.join(parts)})") from None


def _write_user_file(home: Path, parts: tuple[str, ...], text: str, account: pwd.struct_passwd) -> Path:
    uid, gid = account.pw_uid, account.pw_gid
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    dir_fd = os.open(home, flags)
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != uid:
            raise CondorError(f"{home} is not owned by {account.pw_name}; not writing a token there")
        for name in parts[:-1]:
            try:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                pass
            next_fd = os.open(name, flags, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
            st = os.fstat(dir_fd)
            if st.st_uid != uid or not stat.S_ISDIR(st.st_mode):
                raise CondorError(f"{home}/{'/'.join(parts[:-1])} is not the account's own folder; not writing a token there")
            os.fchmod(dir_fd, 0o700)
        final = parts[-1]
        tmp = f".{final}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        try:
            os.fchown(fd, uid, gid)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return Path(home, *parts)
