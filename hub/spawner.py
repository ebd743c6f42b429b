"""The local spawner of the embedded platform.

A LocalProcessSpawner whose sessions run either as the user's own system account (root: a
shared machine) or as the platform's account (a laptop). Either way the session gets a home
under the state directory, the Officina server extension, and no way back to root.
JupyterHub's own `get_state`/`load_state`/`poll` (the pid) let a restarted hub find running
sessions again; the pid file lets the supervisor end sessions a crashed hub left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from importlib import resources
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from tornado import web
from traitlets import Bool, Dict, List, Unicode, default

from .accounts import ensure_account, make_session_preexec, write_server_pidfile
from .authenticator import token_url_for
from .gpu_pool import GPU, GPUPool, NoGPUFree, detect_gpus
from .limits import SessionLimits
from .profiles import Catalogue, ChoiceError, Selection


def lab_config_dir() -> str:
    """Jupyter config folder that enables the officina.lab server extension in sessions."""
    return str(resources.files("officina.lab").joinpath("jupyter-config"))


def user_error(status: int, message: str) -> web.HTTPError:
    """An HTTP error whose message JupyterHub shows as it is, on the form and in the API."""
    error = web.HTTPError(status, message)
    error.jupyterhub_message = message
    return error


def lab_data_dir() -> str:
    """Jupyter data folder with Officina's kernelspec."""
    return str(resources.files("officina.lab").joinpath("jupyter-data"))


class LocalSessionSpawner(LocalProcessSpawner):
    run_as_system_accounts = Bool(
        True, config=True, help="Run each user's session as that user's own system account (needs root)."
    )
    homes_dir = Unicode(config=True, help="Folder holding one home per hub user.")
    pid_dir = Unicode(config=True, help="Folder for user-server pid files read by the supervisor.")
    profiles = List(config=True, help="The profile catalogue (settings `profiles`, defaults filled in).")
    gpu_inventory = List(None, allow_none=True, config=True, help="[{index, model}]; None: ask nvidia-smi.")
    gpu_table = Unicode(config=True, help="JSON file of the GPU pool's claims.")
    condor_pool = Dict(
        config=True,
        help="The embedded HTCondor pool ({root, state, port, token_lifetime}); empty: none.",
    )
    limits_mode = Unicode("rlimit", config=True, help="cgroup2, cgroup1 or rlimit (see limits.py).")

    _inventory_cache: list[GPU] | None = None

    # ----- the profile catalogue -----------------------------------------------------------
    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.profiles)

    @property
    def user_groups(self) -> list[str]:
        return [g.name for g in self.user.groups]

    @property
    def gpu_pool(self) -> GPUPool:
        cls = type(self)
        if self.gpu_inventory is not None:
            inventory = [GPU(g["index"], g["model"]) for g in self.gpu_inventory]
        else:
            if cls._inventory_cache is None:
                cls._inventory_cache = detect_gpus()
            inventory = cls._inventory_cache
        return GPUPool(Path(self.gpu_table), inventory)

    def _options_form(self, spawner=None) -> str:
        catalogue = self.catalogue
        groups = self.user_groups
        choices = catalogue.choices(groups, self.gpu_pool.availability(), local=True)
        default = catalogue.default_for(groups)
        return catalogue.form_html(choices, default)

    def options_from_form(self, formdata):
        try:
            return self.catalogue.choose(formdata, self.user_groups).as_options()
        except ChoiceError as err:
            raise user_error(400, str(err)) from None

    def _selection(self) -> Selection:
        """The user's validated choice: form, API body or the default, checked again here
        because the REST API bypasses the form."""
        options = self.user_options or {}
        form = {"profile": [options["profile"]]} if options.get("profile") else {}
        if options.get("mem_limit"):
            form["memory_gb"] = [str(int(options["mem_limit"]) / 1024**3)]
        try:
            return self.catalogue.choose(form, self.user_groups)
        except ChoiceError as err:
            raise user_error(400, str(err)) from None

    @property
    def session_key(self) -> str:
        return self._pid_key

    @default("options_form")
    def _options_form_default(self):
        return self._options_form

    @property
    def home(self) -> Path:
        return Path(self.homes_dir) / self.user.name

    @property
    def _pid_key(self) -> str:
        return f"{self.user.name}--{self.name}" if self.name else self.user.name

    def _account(self):
        return ensure_account(self.user.name, self.home) if self.run_as_system_accounts else None

    def make_preexec_fn(self, name):
        switch_account = make_session_preexec(self.home, self._session_account)
        limits = self._limits

        def preexec():
            # Join the session's cgroups (or set rlimits) while still root, then drop to the user.
            if limits is not None:
                limits.preexec()
            switch_account()

        return preexec

    def user_env(self, env):
        account = self._session_account
        env["USER"] = account.pw_name if account else os.environ.get("USER", "")
        env["HOME"] = str(self.home)
        env["SHELL"] = "/bin/bash"
        # The session's terminal finds this platform's Python and Jupyter first.
        # A clean system PATH, not the hub's (which may name folders of root's own).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
        env["JUPYTER_CONFIG_PATH"] = lab_config_dir()
        # Officina's python3 kernelspec (it loads officina.lab.kernel) shadows the default one.
        env["JUPYTER_PATH"] = lab_data_dir()
        env["JUPYTER_RUNTIME_DIR"] = str(self.home / ".local/share/jupyter/runtime")
        env["IPYTHONDIR"] = str(self.home / ".ipython")
        # The token path: the session extension asks the hub's token service (with this
        # server's own JupyterHub token) and keeps this file fresh. WLCG token discovery
        # (BEARER_TOKEN_FILE) makes every tool in the session find it.
        env["BEARER_TOKEN_FILE"] = str(self.home / ".officina" / "bearer_token")
        env["OFFICINA_TOKEN_URL"] = token_url_for(self.hub.api_url, self.user.name)
        condor = dict(getattr(self, "_condor_env", None) or {})
        if condor:
            # The pool's commands (condor_submit, condor_q, condor_rm) before the rest.
            env["PATH"] = condor.pop("PATH").split(os.pathsep)[0] + os.pathsep + env["PATH"]
            env.update(condor)
        selection = self._current_selection
        if selection is not None:
            profile = selection.profile
            env.update(profile.env)
            env["OFFICINA_PROFILE"] = profile.slug
            env["OFFICINA_MEM_LIMIT"] = str(selection.mem_limit)
            env["OFFICINA_CPU_LIMIT"] = f"{profile.cpu_limit:g}"
            env["OFFICINA_LIMITS"] = self.limits_mode
            # Only the GPUs handed to this session are visible to it (none for CPU profiles).
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self._gpus))
            env["NVIDIA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"] or "void"
            if self._gpus:
                env["OFFICINA_GPUS"] = env["CUDA_VISIBLE_DEVICES"]
        return env

    async def start(self):
        selection = self._selection()
        profile = selection.profile
        self._gpus = []
        if profile.needs_gpu:
            try:
                self._gpus = self.gpu_pool.allocate(self.session_key, profile.gpu_count, profile.gpu_model)
            except NoGPUFree as err:
                raise user_error(409, f"{profile.display_name}: {err}") from None
        try:
            self._current_selection = selection
            self.mem_limit = selection.mem_limit
            self.cpu_limit = profile.cpu_limit
            self.cpu_guarantee = profile.cpu_guarantee
            self.mem_guarantee = profile.mem_guarantee
            self._limits = SessionLimits(self.limits_mode, self._limits_key, selection.mem_limit, profile.cpu_limit)
            await asyncio.to_thread(self._limits.prepare)
            # Creating the account runs useradd: keep it off the hub's event loop.
            self._session_account = await asyncio.to_thread(self._account)
            if not self.run_as_system_accounts:
                self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._condor_env = await asyncio.to_thread(self._condor_token)
            bin_dir = Path(profile.environment) / "bin" if profile.environment else Path(sys.executable).parent
            self.cmd = [str(bin_dir / "jupyterhub-singleuser")]
            ip, port = await super().start()
        except BaseException:
            self._release()
            raise
        write_server_pidfile(Path(self.pid_dir), self._pid_key, self.pid)
        if self._gpus:
            self.gpu_pool.bind(self.session_key, self.pid)
        self.log.info(
            "Session %s: profile %s, memory %d MB, %g cores, GPUs [%s], limits by %s",
            self.session_key, profile.slug, selection.mem_limit // 1024**2, profile.cpu_limit,
            ",".join(map(str, self._gpus)), self.limits_mode,
        )
        return ip, port

    @property
    def _limits_key(self) -> str:
        """The session's cgroup name: its key, prefixed by this platform's (cgroups are
        machine-wide, and a second platform on the machine must never reach this one's)."""
        platform = hashlib.sha256(str(Path(self.pid_dir).resolve()).encode()).hexdigest()[:8]
        return f"{platform}-{self.session_key}"

    def _condor_token(self) -> dict:
        """A fresh HTCondor token for this user (their own schedd, their account), and what
        the session needs to use the pool; nothing when the platform runs no pool."""
        if not self.condor_pool:
            return {}
        from .condor.pool import CondorPool
        from .condor.tokens import mint_token

        pool = CondorPool(root=self.condor_pool["root"], state_dir=self.condor_pool["state"],
                          homes=self.homes_dir, port=self.condor_pool["port"])
        if not pool.running:
            self.log.warning("HTCondor pool not running: %s's session gets no token", self.user.name)
            return {}
        minted = mint_token(pool, self.user.name, self.home, self.condor_pool["token_lifetime"])
        self.log.info("HTCondor token for %s as %s (%d s)", self.user.name, minted.identity, minted.lifetime_s)
        return pool.client_env(self.home)

    def _release(self) -> None:
        if self._gpus:
            self.gpu_pool.release(self.session_key)
        self._gpus = []
        if self._limits is not None:
            self._limits.cleanup()

    async def stop(self, now=False):
        await super().stop(now=now)
        (Path(self.pid_dir) / f"{self._pid_key}.pid").unlink(missing_ok=True)
        if self._limits is None and self._state_profile:
            # A hub restarted since the start: rebuild what to clean up from the saved state.
            self._limits = SessionLimits(self.limits_mode, self._limits_key, 0, 0)
        await asyncio.to_thread(self._release)

    # A restarted hub finds running sessions again through this state (pid from JupyterHub's
    # LocalProcessSpawner; profile, GPUs and memory from here).
    def get_state(self):
        state = super().get_state()
        if self._current_selection is not None:
            state["officina"] = {
                "profile": self._current_selection.profile.slug,
                "mem_limit": self._current_selection.mem_limit,
                "gpus": list(self._gpus),
            }
        return state

    def load_state(self, state):
        super().load_state(state)
        saved = state.get("officina")
        if saved:
            self._state_profile = saved["profile"]
            self._gpus = list(saved.get("gpus", []))
            profile = self.catalogue.by_slug.get(saved["profile"])
            if profile is not None:
                self._current_selection = Selection(profile, saved["mem_limit"])

    def clear_state(self):
        super().clear_state()
        self._current_selection = None
        self._state_profile = None
        self._gpus = []

    _session_account = None
    _current_selection: Selection | None = None
    _state_profile: str | None = None
    _gpus: list = []
    _limits: SessionLimits | None = None
