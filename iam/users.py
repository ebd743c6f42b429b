"""The user directory: a YAML file of accounts, re-read when it changes on disk.

Re-reading on change is how an operator (or a test) suspends a user or moves them between
groups while the stand-in runs, the way an IAM administrator would in IAM's dashboard.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, read_document, validate_document

log = logging.getLogger(__name__)

GROUP_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"

USERS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["users"],
    "properties": {
        "users": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["username", "sub", "password"],
                "properties": {
                    "username": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$"},
                    "sub": {"type": "string", "minLength": 1, "maxLength": 128},
                    "password": {"type": "string", "minLength": 1},
                    "name": {"type": "string"},
                    "given_name": {"type": "string"},
                    "family_name": {"type": "string"},
                    "email": {"type": "string"},
                    "email_verified": {"type": "boolean"},
                    "groups": {
                        "type": "array",
                        "items": {"type": "string", "pattern": GROUP_PATTERN},
                    },
                    "active": {"type": "boolean"},
                },
            },
        }
    },
}


def with_ancestors(groups) -> tuple[str, ...]:
    """IAM puts every ancestor of a subgroup in the claims: `a/b/c` gives a, a/b, a/b/c."""
    expanded: dict[str, None] = {}
    for group in groups:
        parts = group.split("/")
        for depth in range(1, len(parts) + 1):
            expanded.setdefault("/".join(parts[:depth]), None)
    return tuple(expanded)


@dataclass(frozen=True)
class User:
    username: str
    sub: str
    password: str = field(repr=False)
    name: str = ""
    given_name: str = ""
    family_name: str = ""
    email: str = ""
    email_verified: bool = True
    groups: tuple[str, ...] = ()
    active: bool = True

    @property
    def all_groups(self) -> tuple[str, ...]:
        return with_ancestors(self.groups)

    def get_user_id(self) -> str:
        """authlib's user interface: the stable identity, never the (renamable) username."""
        return self.sub

    def check_password(self, password: str) -> bool:
        return hmac.compare_digest(self.password.encode(), password.encode())


def parse_users(document, source: str) -> dict[str, User]:
    """Users keyed by `sub`; usernames and subs must be unique."""
    try:
        validate_document(document, USERS_SCHEMA)
    except ConfigError as err:
        raise ConfigError(f"users_file {source}: {err}") from None
    users: dict[str, User] = {}
    names: set[str] = set()
    for i, raw in enumerate(document["users"]):
        user = User(**{**raw, "groups": tuple(raw.get("groups", ()))})
        if user.username in names:
            raise ConfigError(f"users_file {source}: users[{i}].username: duplicate username")
        if user.sub in users:
            raise ConfigError(f"users_file {source}: users[{i}].sub: duplicate sub")
        names.add(user.username)
        users[user.sub] = user
    return users


def load_users(path: Path) -> dict[str, User]:
    document = read_document(path)
    if not isinstance(document, dict):
        raise ConfigError(f"users_file {path}: top level must be a mapping with 'users'")
    return parse_users(document, str(path))


class UserDirectory:
    """Looks users up by sub or username; picks up edits of the file on the next lookup."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._by_sub = load_users(self.path)
        self._by_name = {u.username: u for u in self._by_sub.values()}
        # Compared against when the username is unknown, so that a failed login takes as
        # long for a missing account as for a wrong password.
        self._dummy = User(username="-", sub="-", password=os.urandom(16).hex())

    def _file_stamp(self):
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp or stamp is None:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                by_sub = load_users(self.path)
            except ConfigError as err:
                # A half-written edit must not lock everybody out: keep the last good list.
                log.warning("Keeping the previous user list: %s", err)
                self._stamp = stamp
                return
            self._by_sub = by_sub
            self._by_name = {u.username: u for u in by_sub.values()}
            self._stamp = stamp
            log.info("Reloaded %d users from %s", len(by_sub), self.path)

    def __len__(self) -> int:
        self._refresh()
        return len(self._by_sub)

    def by_sub(self, sub: str | None) -> User | None:
        self._refresh()
        return self._by_sub.get(sub) if sub else None

    def by_username(self, username: str | None) -> User | None:
        self._refresh()
        return self._by_name.get(username) if username else None

    def authenticate(self, username: str, password: str) -> User | None:
        """The user whose password matches, active or not (the caller words the refusal)."""
        user = self.by_username(username)
        candidate = user or self._dummy
        ok = candidate.check_password(password or "")
        return user if ok and user is not None else None
