"""Reading from the federation with a token file, the way a session does.

Sessions find their token the WLCG way: BEARER_TOKEN_FILE names a file holding the access
token (kept fresh by the platform), which XRootD's client reads itself; the token is never put
in an argument or a URL. X509_CERT_DIR points at the federation's CA (the daemons speak TLS,
which the token protocol requires).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

XRDCP = "/usr/bin/xrdcp"


class DataReadError(Exception):
    """A read was refused or failed; the message says which path and why."""


def reader_environment(token_file: str | os.PathLike | None, ca_dir: str | os.PathLike,
                       base: dict | None = None) -> dict[str, str]:
    """The environment for XRootD clients (xrdcp, the Python `XRootD` bindings, fsspec-xrootd,
    uproot) reading with `token_file`: BEARER_TOKEN_FILE and X509_CERT_DIR. No token file:
    any token the caller's environment names is removed, so the read is anonymous."""
    env = dict(os.environ if base is None else base)
    for name in ("BEARER_TOKEN", "BEARER_TOKEN_FILE"):
        env.pop(name, None)
    if token_file is not None:
        env["BEARER_TOKEN_FILE"] = str(token_file)
    env["X509_CERT_DIR"] = str(ca_dir)
    # Nothing falls back to another token location of this account (XDG_RUNTIME_DIR/bt_u<uid>).
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def _token_problem(token_file) -> str:
    """Why a token was likely refused, read from the token's own claims (never printed)."""
    if token_file is None:
        return "no valid token: none was given (set BEARER_TOKEN_FILE to the session's token file)"
    try:
        payload = Path(token_file).read_text().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (OSError, IndexError, ValueError):
        return f"no valid token: {token_file} does not hold a JWT access token"
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp <= time.time():
        return f"no valid token: the token in {token_file} expired {int(time.time() - exp)} s ago"
    return ("no valid token: the token was refused (wrong issuer or signature, or not a WLCG-profile "
            "token; the cache's log says which)")


def _explain(path: str, detail: str, token_file=None) -> str:
    if "No protocols left to try" in detail or "Auth failed" in detail:
        why = _token_problem(token_file)
    elif "permission denied" in detail.lower() or "3010" in detail:
        why = "permission denied: the token's groups and scopes do not allow reading this path"
    elif "no such file" in detail.lower() or "3011" in detail:
        why = ("not found: the file is not in the cache and no site could serve it "
               "(the path does not exist, or its site is unreachable)")
    elif "timed out" in detail.lower() or "Operation expired" in detail:
        why = "timed out: the file is not in the cache and its site did not answer"
    else:
        why = "read failed"
    return f"cannot read {path}: {why} [{detail.strip().splitlines()[-1] if detail.strip() else 'no detail'}]"


def read_file(url: str, destination: str | os.PathLike, token_file: str | os.PathLike | None,
              ca_dir: str | os.PathLike, timeout: float = 120) -> Path:
    """Copy `url` (root://host:port//path) to `destination` with the token in `token_file`.
    Raises DataReadError with a reason a user can act on."""
    destination = Path(destination)
    result = subprocess.run(
        [XRDCP, "--force", "--nopbar", url, str(destination)],
        env=reader_environment(token_file, ca_dir), capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        path = "/" + url.split("//", 2)[-1].lstrip("/") if "//" in url else url
        raise DataReadError(_explain(path, result.stderr or result.stdout, token_file))
    return destination
