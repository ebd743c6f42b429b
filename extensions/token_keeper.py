"""Keeps the session's bearer token file fresh, from the hub's token service.

The file (`$BEARER_TOKEN_FILE`, mode 0600, replaced atomically) always holds a valid IAM
access token: it is renewed when the configured fraction of the token's life is left
(halfway by default), so a reader never sees an expired one while the hub can refresh.
Beside it, `token-status.json` says what the notebook widget and `/officina/api/token` show
(expiry, groups, audience, state); it never holds the token. If the hub says the user must
log in again, the state says so and the keeper keeps asking, slowly, until they have.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("officina.lab.tokens")

STATUS_FILE = "token-status.json"
RETRY_SECONDS = (2, 5, 10, 30, 60)
LOGIN_RETRY_SECONDS = 30


def write_private(path: Path, text: str) -> None:
    """Write owner-only through a temporary file, so readers see the old or the new file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def status_path(token_file: Path) -> Path:
    return token_file.with_name(STATUS_FILE)


def read_status(token_file: str | None = None) -> dict:
    """The keeper's status as the session sees it (also used by officina.widgets)."""
    token_file = token_file or os.environ.get("BEARER_TOKEN_FILE")
    if not token_file:
        return {"state": "disabled", "message": "This session has no token path (BEARER_TOKEN_FILE unset)."}
    try:
        status = json.loads(status_path(Path(token_file)).read_text())
    except (OSError, ValueError):
        return {"state": "starting", "message": "The session has not received a token yet."}
    if status.get("state") == "valid" and status.get("expires_at", 0) <= time.time():
        status["state"] = "expired"
    if "expires_at" in status:
        status["expires_in"] = max(0, int(status["expires_at"] - time.time()))
    status["user"] = os.environ.get("JUPYTERHUB_USER")
    return status


class TokenKeeper:
    def __init__(self, token_url: str, api_token: str, token_file: Path):
        self.token_url = token_url
        self.api_token = api_token
        self.token_file = token_file
        self.status: dict = {"state": "starting"}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._failures = 0

    @classmethod
    def from_environment(cls) -> TokenKeeper | None:
        token, path = os.environ.get("JUPYTERHUB_API_TOKEN"), os.environ.get("BEARER_TOKEN_FILE")
        url = os.environ.get("OFFICINA_TOKEN_URL")
        if not url and os.environ.get("JUPYTERHUB_API_URL") and os.environ.get("JUPYTERHUB_USER"):
            # Sessions on Kubernetes: the hub's API URL as JupyterHub hands it to every server.
            user = quote(os.environ["JUPYTERHUB_USER"], safe="")
            url = f"{os.environ['JUPYTERHUB_API_URL'].rstrip('/')}/officina/token/{user}"
        if not (url and token and path):
            return None
        return cls(url, token, Path(path))

    def start(self) -> None:
        self._task = asyncio.get_event_loop().create_task(self._run())

    def renew_now(self) -> None:
        self._wake.set()

    def _set_status(self, **status) -> None:
        self.status = {**status, "file": str(self.token_file), "updated_at": int(time.time())}
        write_private(status_path(self.token_file), json.dumps(self.status))

    async def renew(self) -> float:
        """Fetch a token; the seconds until the next renewal."""
        request = HTTPRequest(
            self.token_url, headers={"Authorization": f"token {self.api_token}"}, request_timeout=15
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as err:
            body = {}
            if err.response is not None:
                try:
                    body = json.loads(err.response.body)
                except ValueError:
                    pass
            if err.code == 401 and body.get("error") == "login_required":
                self._failures = 0
                self._set_status(state="login_required", message=body.get("message", ""))
                log.warning("Token service: %s", body.get("message", "login required"))
                return LOGIN_RETRY_SECONDS
            return self._failed(f"the hub's token service answered {err.code}: {body.get('message', err.message)}")
        except OSError as err:
            return self._failed(f"the hub's token service is unreachable: {err}")
        body = json.loads(response.body)
        write_private(self.token_file, body["access_token"] + "\n")
        self._failures = 0
        lifetime = body.get("lifetime") or body["expires_in"]
        margin = body.get("refresh_margin", 0.5)
        self._set_status(
            state="valid",
            expires_at=body["expires_at"],
            lifetime=lifetime,
            scope=body.get("scope", ""),
            audience=body.get("audience"),
            groups=body.get("groups", []),
            renewed_at=int(time.time()),
        )
        log.info("Bearer token renewed; it expires in %d s", body["expires_in"])
        # Renew when `margin` of its lifetime is left (the hub refreshes at the same point).
        return max(1.0, body["expires_at"] - time.time() - lifetime * margin + 1)

    def _failed(self, message: str) -> float:
        delay = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS) - 1)]
        left = self.status.get("expires_at", 0) - time.time() if self.status.get("state") == "valid" else 0
        if left > 0:
            # Never back off past the current token's expiry: retry within a third of what is left.
            delay = max(1, min(delay, left / 3))
        self._failures += 1
        previous = self.status if self.status.get("state") == "valid" else {}
        # Keep the last token's facts: it may well still be valid for a while.
        self._set_status(**{**previous, "state": "valid" if previous else "error", "last_error": message})
        log.warning("Bearer token not renewed (%s); retrying in %d s", message, delay)
        return delay

    async def _run(self) -> None:
        while True:
            try:
                delay = await self.renew()
            except Exception:  # noqa: BLE001 - the keeper must outlive any single failure
                log.exception("Bearer token renewal failed")
                delay = 30
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
