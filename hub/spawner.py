"""The local spawner of the embedded platform.

A LocalProcessSpawner whose sessions run either as the user's own system account (root: a
shared machine) or as the platform's account (a laptop). Either way the session gets a home
under the state directory, the Officina server extension, and no way back to root.
JupyterHub's own `get_state`/`load_state`/`poll` (the pid) let a restarted hub find running
sessions again; the pid file lets the supervisor end sessions a crashed hub left behind.
"""

from __future__ import annotations

import asyncio
import os
import sys
from importlib import resources
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Unicode

from .accounts import ensure_account, make_session_preexec, write_server_pidfile
from .authenticator import token_url_for


def lab_config_dir() -> str:
    """Jupyter config folder that enables the officina.lab server extension in sessions."""
    return str(resources.files("officina.lab").joinpath("jupyter-config"))


class LocalSessionSpawner(LocalProcessSpawner):
    run_as_system_accounts = Bool(
        True, config=True, help="Run each user's session as that user's own system account (needs root)."
    )
    homes_dir = Unicode(config=True, help="Folder holding one home per hub user.")
    pid_dir = Unicode(config=True, help="Folder for user-server pid files read by the supervisor.")

    @property
    def home(self) -> Path:
        return Path(self.homes_dir) / self.user.name

    @property
    def _pid_key(self) -> str:
        return f"{self.user.name}--{self.name}" if self.name else self.user.name

    def _account(self):
        return ensure_account(self.user.name, self.home) if self.run_as_system_accounts else None

    def make_preexec_fn(self, name):
        return make_session_preexec(self.home, self._session_account)

    def user_env(self, env):
        account = self._session_account
        env["USER"] = account.pw_name if account else os.environ.get("USER", "")
        env["HOME"] = str(self.home)
        env["SHELL"] = "/bin/bash"
        # The session's terminal finds this platform's Python and Jupyter first.
        # A clean system PATH, not the hub's (which may name folders of root's own).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
        env["JUPYTER_CONFIG_PATH"] = lab_config_dir()
        env["JUPYTER_RUNTIME_DIR"] = str(self.home / ".local/share/jupyter/runtime")
        env["IPYTHONDIR"] = str(self.home / ".ipython")
        # The token path: the session extension asks the hub's token service (with this
        # server's own JupyterHub token) and keeps this file fresh. WLCG token discovery
        # (BEARER_TOKEN_FILE) makes every tool in the session find it.
        env["BEARER_TOKEN_FILE"] = str(self.home / ".officina" / "bearer_token")
        env["OFFICINA_TOKEN_URL"] = token_url_for(self.hub.api_url, self.user.name)
        return env

    async def start(self):
        # Creating the account runs useradd: keep it off the hub's event loop.
        self._session_account = await asyncio.to_thread(self._account)
        if not self.run_as_system_accounts:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.cmd = [str(Path(sys.executable).parent / "jupyterhub-singleuser")]
        ip, port = await super().start()
        write_server_pidfile(Path(self.pid_dir), self._pid_key, self.pid)
        return ip, port

    async def stop(self, now=False):
        await super().stop(now=now)
        (Path(self.pid_dir) / f"{self._pid_key}.pid").unlink(missing_ok=True)

    _session_account = None
