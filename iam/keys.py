"""The stand-in's secrets on disk: the RSA signing key `rsa1` and the browser-session key.

Both are generated once into the owner-only state directory and reused on every start, so
a restart keeps the JWKS (tokens issued before still verify) and logged-in browsers.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from joserfc.jwk import RSAKey

from .config import ConfigError

log = logging.getLogger(__name__)

SIGNING_KEY_ID = "rsa1"  # IAM's kid; clients sometimes log it, nobody should depend on it
SIGNING_ALG = "RS256"
_KEY_PARAMETERS = {"kid": SIGNING_KEY_ID, "alg": SIGNING_ALG, "use": "sig"}


def ensure_private_dir(path: Path) -> Path:
    """Create the state directory owner-only, or tighten an existing one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("state_dir %s was mode %o; making it owner-only (700)", path, mode)
        path.chmod(0o700)
    return path


def _write_once(path: Path, data: bytes) -> bool:
    """Write a 0600 file only if it does not exist yet; False if another start won the race."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails if the target exists, so a complete file appears atomically and an
        # existing key is never replaced.
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _read_private(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was mode %o; making it owner-only (600)", path, mode)
        path.chmod(0o600)
    return path.read_bytes()


def load_or_create_signing_key(state_dir: Path) -> RSAKey:
    path = state_dir / f"{SIGNING_KEY_ID}.pem"
    if not path.exists():
        key = RSAKey.generate_key(2048, parameters=_KEY_PARAMETERS, private=True)
        if _write_once(path, key.as_pem(private=True)):
            log.info("Generated signing key %s in %s", SIGNING_KEY_ID, path)
    try:
        key = RSAKey.import_key(_read_private(path), parameters=_KEY_PARAMETERS)
    except Exception:  # noqa: BLE001 - any parse failure means the same thing here
        key = None
    if key is None or not key.is_private:
        raise ConfigError(
            f"state_dir: {path} is not a private RSA key in PEM format "
            "(remove it to generate a new one)"
        )
    return key


def public_jwks(key: RSAKey) -> dict:
    return {"keys": [key.as_dict(private=False)]}


def load_or_create_session_secret(state_dir: Path) -> bytes:
    path = state_dir / "session.key"
    if not path.exists():
        _write_once(path, secrets.token_hex(32).encode())
    return _read_private(path).strip()
