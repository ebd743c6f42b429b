"""DEEPaaS model servers as local processes, run as their owner's account.

A resource of kind "model" is one `deepaas-run` from the model servers' own environment
(scripts/model-env.sh: DEEPaaS's pins conflict with the notebook's), on a free loopback port,
serving either a model installed there (the catalogue in `resources.model.catalogue`) or the
owner's own package: a folder in their home holding a Python package whose module has the
DEEPaaS v2 functions (get_metadata, get_train_args, train, get_predict_args, predict, ...).
DEEPaaS finds models by their `deepaas.v2.model` entry point; for an own package the server
gets a folder of its own on its PYTHONPATH with a generated distribution declaring that entry
point, and the package's parent folder before it.

Training results go to the owner's home (`~/.officina/models/<model>`, the model's
OFFICINA_MODEL_DIR), so they outlive the server. An own package is reloaded after code changes:
the manager's periodic `alive` check compares the package's newest source time with the one the
server started with and restarts the server on the same port (DEEPaaS has no reload of its own).

Who may call it is the resource manager's business (its proxy: the owner and the groups the
owner shared it with); the server itself listens on loopback only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import urllib.request
from pathlib import Path

from .contract import BackendError, Owner, Resource
from .spark_local import (LOOPBACK, _process, free_port, log_tail, owner_account, resource_workdir, spawn_as_owner,
                          terminate, wait_until_answering)

STATE_VERSION = 1


def newest_source(folder: Path) -> float:
    """The newest modification time of the package's Python sources (0 when none)."""
    newest = 0.0
    for path in folder.rglob("*.py"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except OSError:
            continue
    return newest


class LocalModelBackend:
    kind = "model"

    def __init__(self, work_root: str | Path, env: str | Path, *, timeout: float = 180.0, grace: float = 5.0):
        """`work_root`: each resource's folder (root-owned, 0711; the resource's own is its
        owner's, 0700). `env`: the model servers' environment. `timeout`: how long a start
        waits for the server to answer (a shipped model may train a default network first)."""
        self.work_root = Path(work_root).absolute()
        self.env = Path(env)
        self.timeout = timeout
        self.grace = grace
        self._children: dict[int, subprocess.Popen] = {}

    # -- the contract ---------------------------------------------------------------------

    def start(self, resource: Resource, owner: Owner) -> None:
        runner = self.env / "bin" / "deepaas-run"
        if not os.access(runner, os.X_OK):
            raise BackendError(f"no model servers' environment at {self.env}: run `scripts/model-env.sh {self.env}`")
        account = self._account(owner)
        package = resource.options.get("package") or ""
        model = Path(package).name if package else resource.options["model"]
        if package and not model.isidentifier():
            raise BackendError(f"package: {package!r} must end in a Python package name (letters, digits, _)")
        port = free_port()
        resource.state = {"version": STATE_VERSION, "workdir": None, "server": None, "port": port,
                          "model": model, "package": str(Path(owner.home) / package) if package else None,
                          "source_time": 0.0,
                          # Who it runs as, for a reload started by the manager's check.
                          "owner": {"account": owner.account, "home": owner.home, "token_file": owner.token_file}}
        resource.endpoints = {"api": f"http://{LOOPBACK}:{port}/", "model": model}
        try:
            resource.state["workdir"] = str(self._make_workdir(resource, owner, account))
            self._launch(resource, owner, account)
        except BackendError:
            self.stop(resource)
            raise
        except Exception as exc:  # anything unforeseen still leaves nothing behind
            self.stop(resource)
            raise BackendError(f"cannot start the model server: {exc}") from exc

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        if workers != 1:
            raise BackendError("a model server is one server: it cannot be scaled")

    def stop(self, resource: Resource) -> None:
        state = resource.state or {}
        if state.get("server"):
            self._terminate(state["server"])
            state["server"] = None
        workdir = state.get("workdir")
        if workdir and Path(workdir).parent == self.work_root:
            shutil.rmtree(workdir, ignore_errors=True)

    def alive(self, resource: Resource) -> tuple[bool, int, str]:
        state = resource.state or {}
        server = state.get("server")
        if not server or _process(server) is None:
            tail = log_tail(server["log"], 6) if server else ""
            return False, 0, f"the model server has exited: {tail}"
        if state.get("package") and newest_source(Path(state["package"])) > state.get("source_time", 0):
            self._reload(resource)
        return True, 1, f"serving {state['model']}"

    def busy(self, resource: Resource) -> bool:
        """A training running on it (DEEPaaS lists them); calls through the proxy count too
        (the manager's touch)."""
        try:
            trainings = self._get(resource, f"v2/models/{resource.state['model']}/train/")
        except (OSError, ValueError):
            return False
        return any(t.get("status") in ("running", "pending") for t in trainings if isinstance(t, dict))

    # -- processes ------------------------------------------------------------------------

    def _account(self, owner: Owner) -> pwd.struct_passwd | None:
        return owner_account(owner, "model server")

    def _make_workdir(self, resource: Resource, owner: Owner, account) -> Path:
        workdir = resource_workdir(self.work_root, resource.id, account, "the model servers' folder")
        made = []
        package = resource.state["package"]
        if package:
            if not (Path(package) / "__init__.py").is_file():
                raise BackendError(f"package: {package} is not a Python package (no __init__.py) in your home")
            # The entry point DEEPaaS looks for, declared by a distribution of our own making.
            model = resource.state["model"]
            info = workdir / "site" / f"officina_own_{model}-0.dist-info"
            info.mkdir(parents=True)
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: officina-own-{model}\nVersion: 0\n")
            (info / "entry_points.txt").write_text(f"[deepaas.v2.model]\n{model} = {model}\n")
            made += [workdir / "site", info, info / "METADATA", info / "entry_points.txt"]
        if account is not None:
            for path in made:
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        return workdir

    def _env(self, resource: Resource, owner: Owner, account) -> dict:
        name = account.pw_name if account is not None else pwd.getpwuid(os.getuid()).pw_name
        state = resource.state
        env = {
            "PATH": f"{self.env / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "USER": name,
            "LOGNAME": name,
            "HOME": owner.home,
            "BEARER_TOKEN_FILE": owner.token_file,
            # Training runs are kept in the owner's home, beyond this server's life.
            "OFFICINA_MODEL_DIR": str(Path(owner.home) / ".officina" / "models" / state["model"]),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        if state["package"]:
            env["PYTHONPATH"] = f"{Path(state['package']).parent}:{Path(state['workdir']) / 'site'}"
        return env

    def _launch(self, resource: Resource, owner: Owner, account) -> None:
        state = resource.state
        workdir = Path(state["workdir"])
        if state["package"]:
            state["source_time"] = newest_source(Path(state["package"]))
        command = [str(self.env / "bin" / "deepaas-run"), "--listen-ip", LOOPBACK, "--listen-port", str(state["port"]),
                   "--model-name", state["model"]]
        state["server"] = spawn_as_owner(  # recorded at once: a failed wait still stops it
            command, self._env(resource, owner, account), cwd=workdir, log=workdir / "server.log", account=account,
            children=self._children, name="server", what="deepaas-run")
        wait_until_answering(state["server"], lambda: self._get(resource, f"v2/models/{state['model']}/") is not None,
                             self.timeout, "the model server")

    def _reload(self, resource: Resource) -> None:
        """The owner changed their package's code: the same server again, on the same port."""
        saved = resource.state["owner"]
        owner = Owner(name=resource.owner, groups=(), account=saved["account"], home=saved["home"],
                      token_file=saved["token_file"])
        account = self._account(owner)
        self._terminate(resource.state["server"])
        try:
            self._launch(resource, owner, account)
        except BackendError:
            self._terminate(resource.state["server"])
            resource.state["server"] = None
            raise

    def _terminate(self, record: dict) -> None:
        terminate([record], self._children, self.grace)

    def _get(self, resource: Resource, path: str):
        import json

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(resource.endpoints["api"] + path, timeout=5) as response:
            return json.load(response)
