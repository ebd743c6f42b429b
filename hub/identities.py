"""Which hub username belongs to which IAM identity (`iss` + `sub`).

IAM usernames can be renamed and, across issuers, can collide; `sub` is stable per issuer.
The hub's user table is keyed by name, so this small table fixes the name an identity got
at its first login: a renamed IAM account keeps its hub user (and home), and a second
identity whose preferred name is taken gets that name with a short suffix of its own.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

# What JupyterHub, system accounts and URLs all accept without escaping.
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
MAX_LENGTH = 32


def safe_username(preferred: str) -> str:
    """Lower case, only [a-z0-9._-], starting with a letter or digit, at most 32 characters."""
    name = _UNSAFE.sub("-", (preferred or "").strip().lower()).strip("-._")
    return name[:MAX_LENGTH].rstrip("-._")


def _suffix(issuer: str, sub: str) -> str:
    return hashlib.sha256(f"{issuer}\n{sub}".encode()).hexdigest()[:6]


class IdentityMap:
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS identities (issuer TEXT NOT NULL, sub TEXT NOT NULL, "
            "username TEXT NOT NULL UNIQUE, preferred TEXT, first_login INTEGER, "
            "PRIMARY KEY (issuer, sub))"
        )

    def lookup(self, issuer: str, sub: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT username FROM identities WHERE issuer = ? AND sub = ?", (issuer, sub)
            ).fetchone()
        return row[0] if row else None

    def username_for(self, issuer: str, sub: str, preferred: str) -> str:
        """The hub username of this identity, assigned at its first login."""
        if not sub:
            raise ValueError("the IAM answer has no 'sub' claim")
        with self._lock:
            row = self._db.execute(
                "SELECT username FROM identities WHERE issuer = ? AND sub = ?", (issuer, sub)
            ).fetchone()
            if row:
                self._db.execute(
                    "UPDATE identities SET preferred = ? WHERE issuer = ? AND sub = ?",
                    (preferred, issuer, sub),
                )
                return row[0]
            base = safe_username(preferred) or "user"
            candidates = [base, f"{base[:MAX_LENGTH - 7]}-{_suffix(issuer, sub)}"]
            for candidate in candidates:
                taken = self._db.execute(
                    "SELECT 1 FROM identities WHERE username = ?", (candidate,)
                ).fetchone()
                if not taken:
                    self._db.execute(
                        "INSERT INTO identities (issuer, sub, username, preferred, first_login) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (issuer, sub, candidate, preferred, int(time.time())),
                    )
                    return candidate
        raise ValueError(f"no free hub username for IAM user {preferred!r}")
