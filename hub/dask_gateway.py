"""Dask clusters for hub users: dask-gateway as a JupyterHub service, with a local backend
whose schedulers and workers run as the user's own system account.

dask-gateway's `LocalBackend` is the one that switches accounts, but in 2026.3, run as root,
it `extend`s its list of paths to chown with a path *string* and so chowns `/`, `t`, `m`...
(see platform-notes.md). `UnsafeLocalBackend` avoids that by not switching accounts at all,
which would run every user's code as root here. `OfficinaLocalBackend` keeps LocalBackend's
process management and fixes the two things: the working directory's files are listed
properly, and processes run as `officina-<user>` (the account the user's session runs as),
without any way back to root.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from dask_gateway_server.backends.local import LocalBackend
from traitlets import Bool, Unicode

from .accounts import make_session_preexec, system_account_name

def account_of(username: str, system_accounts: bool) -> pwd.struct_passwd:
    """The account a hub user's cluster runs as: theirs (root mode) or the platform's."""
    if not system_accounts:
        return pwd.getpwuid(os.getuid())
    try:
        return pwd.getpwnam(system_account_name(username))
    except KeyError:
        raise ValueError(
            f"{username} has no session account yet: start a session once before creating a cluster"
        ) from None


class OfficinaLocalBackend(LocalBackend):
    run_as_system_accounts = Bool(
        True, config=True, help="Run clusters as each user's own account (the platform runs as root)."
    )
    homes_dir = Unicode(config=True, help="The platform's folder of user homes (state_dir/homes).")

    def set_file_permissions(self, paths, username):
        account = account_of(username, self.run_as_system_accounts)
        for path in paths:
            os.chown(path, account.pw_uid, account.pw_gid)

    def setup_working_directory(self, cluster):
        # LocalBackend's own version, with the paths list built correctly.
        workdir = os.path.join(self.clusters_directory, cluster.name)
        certs, logs = self.get_certs_directory(workdir), self.get_logs_directory(workdir)
        paths = [workdir, certs, logs]
        for path in paths:
            os.makedirs(path, 0o700, exist_ok=True)
        cert_path, key_path = self._get_tls_paths(workdir)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for path, data in ((cert_path, cluster.tls_cert), (key_path, cluster.tls_key)):
            with os.fdopen(os.open(path, flags, 0o600), "wb") as handle:
                handle.write(data)
            paths.append(path)
        self.set_file_permissions(paths, cluster.username)
        return workdir

    def make_preexec_fn(self, cluster):
        # Exactly what a session's process does before exec: drop to the user's account
        # (root mode), no_new_privs, umask 077; then work in the cluster's folder.
        account = account_of(cluster.username, self.run_as_system_accounts)
        return make_session_preexec(Path(cluster.state["workdir"]), account if self.run_as_system_accounts else None)

    def get_env(self, cluster):
        env = super().get_env(cluster)
        account = account_of(cluster.username, self.run_as_system_accounts)
        # The home the user's sessions use (this platform's state), not the account's
        # passwd entry, which names the home of whichever platform created the account.
        home = Path(self.homes_dir) / cluster.username
        env["USER"] = account.pw_name
        env["HOME"] = str(home)
        # The user's fresh IAM token, kept by their session (the token path): workers read
        # the user's data with it.
        token_file = home / ".officina" / "bearer_token"
        env["BEARER_TOKEN_FILE"] = str(token_file)
        return env


def prepare_clusters_directory(path: Path) -> Path:
    """Owned by root, traversable (each cluster's own folder is 0700 and the user's)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o711)
    return path


def configure(c, raw_settings: dict) -> None:
    """dask-gateway-server's configuration, from the platform settings (see
    dask_gateway_config.py, the file the supervisor starts the gateway with)."""
    import sys

    from .settings import Settings
    from .state import StateDir

    settings = Settings(raw=raw_settings, source="supervisor")
    state = StateDir(settings.state_dir)
    hub, dask = settings["hub"], settings["dask"]
    venv_bin = Path(sys.executable).parent

    c.DaskGateway.address = f"127.0.0.1:{dask['api_port']}"
    c.Proxy.address = f"127.0.0.1:{dask['port']}"
    c.DaskGateway.backend_class = "officina.hub.dask_gateway.OfficinaLocalBackend"
    c.OfficinaLocalBackend.run_as_system_accounts = settings.run_as_system_accounts
    c.OfficinaLocalBackend.homes_dir = str(state.homes)
    c.OfficinaLocalBackend.clusters_directory = str(prepare_clusters_directory(state.root / "dask" / "clusters"))
    # Cluster records survive a gateway restart (encrypted with a key from the state dir).
    c.DBBackendBase.db_url = f"sqlite:///{state.root / 'dask' / 'db' / 'gateway.sqlite'}"
    c.DBBackendBase.db_cleanup_period = 600
    c.ClusterConfig.scheduler_cmd = [str(venv_bin / "dask"), "scheduler"]
    c.ClusterConfig.worker_cmd = [str(venv_bin / "dask"), "worker"]
    c.ClusterConfig.idle_timeout = dask["idle_timeout"]
    c.ClusterConfig.worker_cores = 1
    c.ClusterConfig.worker_memory = "1 G"
    c.ClusterConfig.scheduler_cores = 1
    c.ClusterConfig.scheduler_memory = "1 G"
    c.OfficinaLocalBackend.inherited_environment = ["LANG", "LC_ALL"]
    c.ClusterConfig.environment = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin"}

    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = f"http://127.0.0.1:{hub['internal_port']}{hub['base_url']}hub/api"
    c.JupyterHubAuthenticator.jupyterhub_service_name = GATEWAY_SERVICE
    # The gateway's own hub token arrives in JUPYTERHUB_API_TOKEN (environment, not argv).


GATEWAY_SERVICE = "dask-gateway"
