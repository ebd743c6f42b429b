"""Persisted grants: authorization codes, refresh tokens and revoked access tokens.

An sqlite file in the state directory, so that a restarted stand-in still honours the refresh
tokens it issued (the hub keeps them across its own restarts). Codes and refresh tokens are
stored as SHA-256 hashes: a copy of the file does not hand out live credentials. Access
tokens are self-contained JWTs; only the `jti` of a revoked one is kept, until it expires.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS authorization_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    redirect_uri TEXT,
    scope TEXT NOT NULL,
    audience TEXT NOT NULL,
    nonce TEXT,
    code_challenge TEXT,
    code_challenge_method TEXT,
    auth_time INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    sub TEXT NOT NULL,
    scope TEXT NOT NULL,
    audience TEXT NOT NULL,
    auth_time INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS revoked_access_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
"""


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    code_hash: str
    client_id: str
    sub: str
    redirect_uri: str | None
    scope: str
    audience: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    expires_at: int

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_amr(self):
        return ["pwd"]


@dataclass
class RefreshToken(TokenMixin):
    token_hash: str
    client_id: str
    sub: str
    scope: str
    audience: tuple[str, ...]
    auth_time: int
    issued_at: int
    expires_at: int | None  # None: never expires (lifetime 0)
    revoked: bool

    def check_client(self, client) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return 0 if self.expires_at is None else max(0, self.expires_at - int(time.time()))

    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked


class GrantStore:
    """Thread-safe: one connection, one re-entrant lock around every statement.

    `exclusive()` holds the same lock across a whole token request, so that two refreshes
    of one refresh token (or two exchanges of one code) are decided one after the other.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.RLock()
        self._pruned_at = 0.0
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row["value"]) != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: unknown grant store version {row['value']}")
        self.prune()

    @contextlib.contextmanager
    def exclusive(self):
        with self._lock:
            yield

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def prune(self) -> None:
        """Forget what can no longer be used; revoked refresh tokens go when they expire."""
        now = int(time.time())
        self._pruned_at = now
        with self._transaction() as db:
            db.execute("DELETE FROM authorization_codes WHERE expires_at <= ?", (now,))
            db.execute(
                "DELETE FROM refresh_tokens WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            )
            db.execute("DELETE FROM revoked_access_tokens WHERE expires_at <= ?", (now,))

    def _prune_hourly(self) -> None:
        if time.time() - self._pruned_at > 3600:
            self.prune()

    # -- authorization codes --

    def save_code(self, value: str, **fields) -> None:
        self._prune_hourly()
        fields["audience"] = " ".join(fields.get("audience", ()))
        columns = ["code_hash", *fields]
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO authorization_codes ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                (token_hash(value), *fields.values()),
            )

    def find_code(self, value: str, client_id: str) -> AuthorizationCode | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM authorization_codes WHERE code_hash = ? AND client_id = ? "
                "AND expires_at > ?",
                (token_hash(value), client_id, int(time.time())),
            ).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["audience"] = tuple(data["audience"].split())
        return AuthorizationCode(**data)

    def delete_code(self, code: AuthorizationCode) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM authorization_codes WHERE code_hash = ?", (code.code_hash,))

    def nonce_pending(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM authorization_codes WHERE client_id = ? AND nonce = ?",
                (client_id, nonce),
            ).fetchone()
        return row is not None

    # -- refresh tokens --

    def save_refresh_token(
        self,
        value: str,
        *,
        client_id: str,
        sub: str,
        scope: str,
        audience: tuple[str, ...],
        auth_time: int,
        issued_at: int,
        expires_at: int | None,
    ) -> None:
        self._prune_hourly()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, client_id, sub, scope, audience, "
                "auth_time, issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token_hash(value),
                    client_id,
                    sub,
                    scope,
                    " ".join(audience),
                    auth_time,
                    issued_at,
                    expires_at,
                ),
            )

    def find_refresh_token(self, value: str) -> RefreshToken | None:
        """The record, whether expired or revoked or not: callers decide what that means."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM refresh_tokens WHERE token_hash = ?", (token_hash(value),)
            ).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["audience"] = tuple(data["audience"].split())
        data["revoked"] = bool(data["revoked"])
        return RefreshToken(**data)

    def revoke_refresh_token(self, record: RefreshToken) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE token_hash = ?", (record.token_hash,)
            )

    # -- access tokens --

    def revoke_access_token(self, jti: str, expires_at: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO revoked_access_tokens (jti, expires_at) VALUES (?, ?)",
                (jti, expires_at),
            )

    def access_token_revoked(self, jti: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM revoked_access_tokens WHERE jti = ?", (jti,)
            ).fetchone()
        return row is not None
