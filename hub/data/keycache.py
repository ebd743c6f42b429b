"""The issuer's signing keys, put where scitokens-cpp looks for them.

scitokens-cpp 0.7.3 (Debian 12), which XRootD's token plugin uses to check signatures, finds
an issuer's keys in a SQLite cache ($XDG_CACHE_HOME/scitokens/scitokens_cpp.sqllite, table
`keycache`) and only when they are missing or due for an update fetches
`<issuer>/.well-known/openid-configuration` and its `jwks_uri`, and that fetch refuses any
issuer that is not https ("Issuer URL must be HTTPS"). The IAM stand-in's issuer is
http://127.0.0.1:<port>/ and its tokens carry that `iss`, so putting it behind TLS would not
help (the issuer string itself is http). What does work, and keeps the check real (signature,
expiry, issuer, scopes, groups all verified by the library): the platform reads the stand-in's
published JWKS over loopback and writes it into each daemon's key cache, at start and then
periodically, with `next_update` in the future so the library never tries its https fetch. A
real IAM (https) needs none of this: the library fetches and caches its keys itself.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import httpx

CACHE_FILE = Path("scitokens") / "scitokens_cpp.sqllite"
# How long seeded keys stay usable without a re-seed; the federation re-seeds far more often.
SEED_LIFETIME_S = 24 * 3600


def fetch_jwks(issuer: str, timeout: float = 10) -> dict:
    """The issuer's public keys, found through its discovery document as scitokens would."""
    base = issuer.rstrip("/")
    meta = httpx.get(f"{base}/.well-known/openid-configuration", timeout=timeout)
    meta.raise_for_status()
    jwks = httpx.get(meta.json()["jwks_uri"], timeout=timeout)
    jwks.raise_for_status()
    keys = jwks.json()
    if not keys.get("keys"):
        raise ValueError(f"the issuer {issuer} publishes no signing keys")
    return keys


def seed_key_cache(cache_home: Path, issuer: str, jwks: dict, uid: int, gid: int) -> Path:
    """Write `jwks` as `issuer`'s keys into the scitokens key cache under `cache_home`
    (the daemon's XDG_CACHE_HOME), owned by the daemon's account."""
    path = cache_home / CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    entry = json.dumps({"jwks": jwks, "expires": now + SEED_LIFETIME_S, "next_update": now + SEED_LIFETIME_S})
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS keycache (issuer text UNIQUE PRIMARY KEY NOT NULL,keys text NOT NULL)")
        # Access tokens may carry the issuer with or without its trailing slash (IAM does both).
        for name in {issuer, issuer.rstrip("/")}:
            db.execute("INSERT OR REPLACE INTO keycache VALUES (?, ?)", (name, entry))
    db.close()
    for p in (cache_home, path.parent, path):
        os.chown(p, uid, gid)
    os.chmod(path, 0o600)
    return path
