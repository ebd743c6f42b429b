"""The state directory: one place for everything that must survive a restart.

Layout (all owner-only; see `StateDir.prepare`):

    <state>/hub/       JupyterHub database and cookie secret
    <state>/secrets/   generated once: auth-state crypt key, proxy token, service tokens,
                       the stand-in client secret
    <state>/iam/       the IAM stand-in's signing key, grants and config
    <state>/run/       the supervisor's lock and process table, user-server pid files
    <state>/logs/      one log per component
    <state>/homes/     one home per hub user

When sessions run as per-user system accounts the state root and homes/ are 0711 (others may
traverse to their own home, never list or read); every other folder stays 0700.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_NAMES = ("crypt_key", "proxy_auth_token", "culler_api_token", "iam_client_secret", "dask_gateway_api_token", "dask_gateway_encrypt_key")


def write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read, without a moment of wider permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


class StateDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    hub = property(lambda self: self.root / "hub")
    secrets_dir = property(lambda self: self.root / "secrets")
    iam = property(lambda self: self.root / "iam")
    run = property(lambda self: self.root / "run")
    logs = property(lambda self: self.root / "logs")
    homes = property(lambda self: self.root / "homes")
    servers = property(lambda self: self.root / "run" / "servers")
    lock_file = property(lambda self: self.root / "run" / "officina.lock")
    process_table = property(lambda self: self.root / "run" / "officina.json")
    settings_file = property(lambda self: self.root / "run" / "settings.json")

    def prepare(self, shared_homes: bool) -> None:
        """Create the layout and (re)apply permissions; idempotent across restarts."""
        traverse_only = 0o711 if shared_homes else 0o700
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, traverse_only)
        for folder in (self.hub, self.secrets_dir, self.iam, self.run, self.logs, self.servers):
            folder.mkdir(exist_ok=True)
            os.chmod(folder, 0o700)
        self.homes.mkdir(exist_ok=True)
        os.chmod(self.homes, traverse_only)
        for name in SECRET_NAMES:
            self.secret(name)

    def secret(self, name: str) -> str:
        """A secret generated on first use and kept for every later start."""
        if name not in SECRET_NAMES:
            raise KeyError(name)
        path = self.secrets_dir / name
        if not path.exists():
            # The crypt key must be 32 bytes hex for JupyterHub's auth-state encryption.
            write_private(path, secrets.token_hex(32))
        return path.read_text().strip()

    def fernet_key(self, name: str) -> str:
        """A secret as a Fernet key (urlsafe base64 of its 32 bytes), as dask-gateway wants."""
        import base64

        return base64.urlsafe_b64encode(bytes.fromhex(self.secret(name))).decode()

    def home_of(self, hub_username: str) -> Path:
        return self.homes / hub_username
