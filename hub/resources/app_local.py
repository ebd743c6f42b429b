"""Published Voila apps as local processes, run as their owner's account.

A resource of kind "app" is one `voila <notebook>` from the notebook environment (the same
Python and kernels as the owner's sessions), on a free loopback port, serving one notebook of
the owner's home at `<hub>/services/resources/apps/<id>/`. The resource manager's proxy lets in
the owner and the members of the groups it is published to (`share_with`); basic users open
the app with no session of their own, as on a Voila gallery.

Two secrets, neither on a command line:
- Voila's own token (JUPYTER_TOKEN, which jupyter_server's identity provider reads): only the
  manager's proxy knows it and sends it upstream, so a local account that finds the loopback
  port cannot open the app's kernels (they run as the owner).
- A JupyterHub token of the owner, minted by the manager for the app's life and revoked when it
  stops, limited to `access:services!service=resources`: the app's kernel lists and calls model
  servers as its owner (the owner's and those shared with the owner), and can start nothing
  (the resource API itself needs `custom:officina:resources`, which this token lacks).
Everyone who opens the app can run code in its kernel (a Voila kernel talks to its page), so
publishing an app is trusting those groups with what the owner's account and that token can do.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..spawner import lab_data_dir
from .contract import BackendError, Owner, Resource
from .spark_local import (LOOPBACK, _process, free_port, log_tail, owner_account, resource_workdir, spawn_as_owner,
                          terminate, wait_until_answering)

STATE_VERSION = 1
APP_TOKEN_SCOPES = ["access:services!service=resources"]


class HubTokens:
    """Tokens for users, from the hub's REST API (the manager's role has the `tokens` scope)."""

    def __init__(self, api_url: str | None = None, token: str | None = None):
        self.api_url = (api_url or os.environ.get("JUPYTERHUB_API_URL", "")).rstrip("/")
        self._token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        if not self.api_url or not self._token:
            raise BackendError("the resource manager has no hub API to mint the app's token with")
        request = urllib.request.Request(
            f"{self.api_url}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self._token}", "Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise BackendError(f"the hub refused the app's token ({exc.code}): {detail}") from None
        except OSError as exc:
            raise BackendError(f"the hub does not answer: {exc}") from None
        return json.loads(text) if text else {}

    def mint(self, user: str, scopes: list[str], expires_in: int, note: str) -> tuple[str, str]:
        made = self._call("POST", f"/users/{user}/tokens",
                          {"scopes": scopes, "expires_in": expires_in, "note": note})
        return made["id"], made["token"]

    def revoke(self, user: str, token_id: str) -> None:
        try:
            self._call("DELETE", f"/users/{user}/tokens/{token_id}")
        except BackendError as exc:
            if "(404)" not in str(exc):  # gone already (expired, or the user revoked it)
                raise


class LocalAppBackend:
    kind = "app"

    def __init__(self, work_root: str | Path, *, public_prefix: str, resources_url: str, tokens: HubTokens,
                 token_lifetime: int, voila: str | Path | None = None, timeout: float = 120.0, grace: float = 5.0):
        """`public_prefix`: the path apps are served under (`.../services/resources/apps/`);
        Voila serves each under its own full path so its pages and websockets pass through
        unchanged. `resources_url`: the manager's loopback address, for the app's kernel."""
        self.work_root = Path(work_root).absolute()
        self.public_prefix = public_prefix.rstrip("/") + "/"
        self.resources_url = resources_url
        self.tokens = tokens
        self.token_lifetime = token_lifetime
        self.voila = Path(voila) if voila else Path(sys.executable).parent / "voila"
        self.timeout = timeout
        self.grace = grace
        self._children: dict[int, subprocess.Popen] = {}

    # -- the contract ---------------------------------------------------------------------

    def start(self, resource: Resource, owner: Owner) -> None:
        if not os.access(self.voila, os.X_OK):
            raise BackendError(f"Voila is not installed at {self.voila}")
        account = owner_account(owner, "app")
        notebook = Path(owner.home) / resource.options["notebook"]
        uid = account.pw_uid if account is not None else os.getuid()
        try:
            # Checked as the owner would see it: their own file, not a link out of their home.
            info = notebook.lstat()
        except OSError:
            raise BackendError(f"notebook: there is no {resource.options['notebook']} in your home") from None
        if not notebook.is_file() or notebook.is_symlink() or info.st_uid != uid:
            raise BackendError(f"notebook: {resource.options['notebook']} must be a notebook file of your own "
                               "(not a link) in your home")
        port = free_port()
        base_url = f"{self.public_prefix}{resource.id}/"
        resource.state = {"version": STATE_VERSION, "workdir": None, "server": None, "port": port,
                          "upstream": f"http://{LOOPBACK}:{port}",
                          "notebook": str(notebook), "base_url": base_url,
                          "upstream_token": secrets.token_urlsafe(32), "hub_token_id": None}
        resource.endpoints = {"app": f"http://{LOOPBACK}:{port}{base_url}", "notebook": resource.options["notebook"]}
        try:
            workdir = self._make_workdir(resource, account)
            resource.state["workdir"] = str(workdir)
            token_id, hub_token = self.tokens.mint(
                resource.owner, APP_TOKEN_SCOPES, self.token_lifetime,
                f"Officina app {resource.id} ({resource.options['notebook']})")
            resource.state["hub_token_id"] = token_id
            self._launch(resource, owner, account, hub_token)
        except BackendError:
            self.stop(resource)
            raise
        except Exception as exc:  # anything unforeseen still leaves nothing behind
            self.stop(resource)
            raise BackendError(f"cannot start the app: {exc}") from exc

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        if workers != 1:
            raise BackendError("an app is one Voila server: it cannot be scaled")

    def stop(self, resource: Resource) -> None:
        state = resource.state or {}
        if state.get("server"):
            terminate([state["server"]], self._children, self.grace)
            state["server"] = None
        if state.get("hub_token_id"):
            self.tokens.revoke(resource.owner, state["hub_token_id"])
            state["hub_token_id"] = None
        workdir = state.get("workdir")
        if workdir and Path(workdir).parent == self.work_root:
            shutil.rmtree(workdir, ignore_errors=True)

    def alive(self, resource: Resource) -> tuple[bool, int, str]:
        server = (resource.state or {}).get("server")
        if not server or _process(server) is None:
            tail = log_tail(server["log"], 6) if server else ""
            return False, 0, f"the app's Voila server has exited: {tail}"
        return True, 1, f"publishing {resource.options['notebook']}"

    def busy(self, resource: Resource) -> bool:
        # A published app waits for its visitors: the idle stop leaves it alone (its owner,
        # or the platform stopping, ends it).
        return True

    def upstream_headers(self, resource: Resource) -> dict:
        """What the manager's proxy adds to each request it passes to the app."""
        return {"Authorization": f"token {resource.state['upstream_token']}"}

    # -- processes ------------------------------------------------------------------------

    def _make_workdir(self, resource: Resource, account) -> Path:
        return resource_workdir(self.work_root, resource.id, account, "the apps' folder")

    def _launch(self, resource: Resource, owner: Owner, account, hub_token: str) -> None:
        state = resource.state
        workdir = Path(state["workdir"])
        name = account.pw_name if account is not None else pwd.getpwuid(os.getuid()).pw_name
        env = {
            "PATH": os.pathsep.join([str(self.voila.parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "USER": name, "LOGNAME": name, "HOME": owner.home,
            # The sessions' kernelspec (Officina's python3 kernel), runtime files in the app's folder.
            "JUPYTER_PATH": lab_data_dir(),
            "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
            "JUPYTER_TOKEN": state["upstream_token"],
            # What officina.lab in the app's kernel uses: the manager, as the owner, read-only.
            "JUPYTERHUB_API_TOKEN": hub_token,
            "OFFICINA_RESOURCES_URL": self.resources_url,
            "BEARER_TOKEN_FILE": owner.token_file,
        }
        command = [str(self.voila), state["notebook"], "--no-browser", f"--port={state['port']}",
                   f"--Voila.ip={LOOPBACK}", f"--Voila.base_url={state['base_url']}", "--Voila.auto_token=True",
                   # Visitors see what went wrong in a cell, not the kernel's traceback.
                   "--VoilaConfiguration.show_tracebacks=False"]
        state["server"] = spawn_as_owner(  # recorded at once: a failed wait still stops it
            command, env, cwd=Path(state["notebook"]).parent, log=workdir / "voila.log", account=account,
            children=self._children, name="voila", what="voila")
        wait_until_answering(state["server"], lambda: self._answers(resource), self.timeout, "Voila")

    def _answers(self, resource: Resource) -> bool:
        """Voila's static files answer once it listens (the page itself would run the notebook)."""
        request = urllib.request.Request(f"{resource.endpoints['app']}voila/static/voila.js",
                                         headers=self.upstream_headers(resource))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=5) as response:
                return response.status == 200
        except (OSError, ValueError):
            return False
