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

import asyncio
import os
import pwd
import time
from pathlib import Path

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.backends.local import LocalBackend
from dask_gateway_server.utils import format_bytes
from traitlets import Bool, List, Unicode

from .accounts import make_session_preexec, system_account_name
from .dask_services import DASHBOARDS_SERVICE, GATEWAY_SERVICE, gateway_db
from .dask_options import SCHEDULER_CORES, SCHEDULER_MEMORY, ClusterOptionsFactory, limit_for


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


class UserLimitsMixin:
    """Per-user limits over all of a user's clusters (dask-gateway only has per-cluster caps).

    The caps of each cluster (`cluster_max_cores`/`_memory`, set from the user's group limit
    when it was created, see dask_options) are the user's whole allowance; what their other
    clusters hold is subtracted here: an explicit scale over it is refused with a message,
    adaptive growth over it is trimmed.
    """

    dask_limits: list  # a trait of the backend class below

    @property
    def _granted(self) -> dict[str, tuple[int, float]]:
        """Workers granted per cluster by scale/adapt (and when), until heartbeats report them."""
        if not hasattr(self, "_granted_counts"):
            self._granted_counts = {}
        return self._granted_counts

    def _granted_now(self, name: str) -> int:
        count, when = self._granted.get(name, (0, 0.0))
        # Two heartbeats later the scheduler's own count is the truth (adaptive may lower it).
        return count if time.monotonic() - when < 2 * self.cluster_heartbeat_period + 5 else 0

    def _held_by_others(self, username: str, cluster_name: str) -> tuple[int, int]:
        cores = memory = 0
        for other in self.db.list_clusters(username=username):
            if other.name == cluster_name:
                continue
            # The scheduler reports a new count only at its next heartbeat: a scale just
            # granted counts at once.
            workers = max(other.count, len(other.active_workers()), self._granted_now(other.name))
            cores += workers * other.config.get("worker_cores", 1)
            memory += workers * other.config.get("worker_memory", 0)
        return cores, memory

    def _allowance(self, cluster) -> tuple[int, int]:
        config = cluster.config
        return (int(config.get("cluster_max_cores") - SCHEDULER_CORES),
                int(config.get("cluster_max_memory") - SCHEDULER_MEMORY))

    def _workers_that_fit(self, cluster, username: str) -> tuple[int, str]:
        max_cores, max_memory = self._allowance(cluster)
        used_cores, used_memory = self._held_by_others(username, cluster.name)
        cores, memory = cluster.config.get("worker_cores", 1), cluster.config.get("worker_memory", 1)
        fit = max(0, min((max_cores - used_cores) // cores, (max_memory - used_memory) // memory))
        why = (f"your limit is {max_cores} worker cores and {format_bytes(max_memory)} across your clusters; "
               f"your other clusters hold {used_cores} cores and {format_bytes(used_memory)}")
        return int(fit), why

    async def start_cluster(self, user, cluster_options):
        limit = limit_for(self.dask_limits, user.groups)
        running = self.db.list_clusters(username=user.name)
        if len(running) >= limit.max_clusters:
            if limit.max_clusters == 0:
                raise PublicException("your groups allow no Dask clusters (no entry of dask.limits applies to you)")
            raise PublicException(
                f"you already have {len(running)} Dask cluster{'s' if len(running) != 1 else ''}, "
                f"the most {limit.source} allows ({limit.max_clusters}); stop one first "
                f"({', '.join(c.name for c in running)})"
            )
        return await super().start_cluster(user, cluster_options)

    async def forward_message_to_scheduler(self, cluster, msg):
        wanted = msg.get("count") if msg.get("op") == "scale" else msg.get("minimum") if msg.get("op") == "adapt" else None
        if wanted:
            record = self.db.get_cluster(cluster.name)
            fit, why = self._workers_that_fit(record, cluster.username)
            if wanted > fit:
                what = "scale to" if msg["op"] == "scale" else "keep at least"
                raise PublicException(f"cannot {what} {wanted} workers, {fit} fit: {why}")
        result = await super().forward_message_to_scheduler(cluster, msg)
        if msg.get("op") in ("scale", "adapt"):
            self._granted[cluster.name] = (wanted or 0, time.monotonic())
        return result

    async def on_cluster_heartbeat(self, cluster_name, msg):
        # The scheduler asks for its adaptive target here: trim it to what the user has left.
        record = self.db.get_cluster(cluster_name)
        if record is not None and record.status == JobStatus.RUNNING and msg.get("count", 0) > record.count:
            fit, _ = self._workers_that_fit(record, record.username)
            if msg["count"] > fit:
                self.log.info("Cluster %s asked for %d workers; %s's limits leave %d",
                              cluster_name, msg["count"], record.username, fit)
                msg = {**msg, "count": max(fit, record.count)}
        return await super().on_cluster_heartbeat(cluster_name, msg)

    async def _cluster_to_running(self, cluster):
        await super()._cluster_to_running(cluster)
        low, high = cluster.options.get("adaptive_minimum", 0), cluster.options.get("adaptive_maximum", 0)
        if high:
            # Chosen in the options (form or widget): the cluster starts adaptive.
            asyncio.ensure_future(self._start_adaptive(cluster.name, low, high))

    async def _start_adaptive(self, name: str, low: int, high: int) -> None:
        record = self.db.get_cluster(name)
        try:
            await super().forward_message_to_scheduler(
                record.to_model(), {"op": "adapt", "minimum": low, "maximum": high, "active": True})
        except PublicException as exc:
            self.log.warning("Cluster %s could not start adaptive scaling: %s", name, exc)

    async def _check_cluster_proxied(self, cluster):
        # Only the scheduler's TLS route (clients authenticate with the cluster's certificate).
        # Upstream also publishes the dashboard at /clusters/<name>/ on the gateway's proxy,
        # with no authentication at all; dashboards go through the dask-dashboards service
        # instead, which checks the JupyterHub login and the cluster's owner.
        if not cluster.added_to_proxies:
            await self.proxy.add_route(kind="SNI", sni=cluster.name, target=cluster.scheduler_address)
            cluster.added_to_proxies = True


class OfficinaLocalBackend(UserLimitsMixin, LocalBackend):
    dask_limits = List(config=True, help="dask.limits of the platform settings.")
    run_as_system_accounts = Bool(
        True, config=True, help="Run clusters as each user's own account (the platform runs as root)."
    )
    homes_dir = Unicode(config=True, help="The platform's folder of user homes (state_dir/homes).")
    dashboard_prefix = Unicode(
        config=True, help="Path under which the dask-dashboards service serves dashboards (…/clusters)."
    )

    def get_scheduler_command(self, cluster):
        # The dashboard lives at the same path on the scheduler as on the hub's proxy, so the
        # dask-dashboards service passes pages, static files and websockets through unchanged.
        command = super().get_scheduler_command(cluster)
        if self.dashboard_prefix:
            command += ["--dashboard-prefix", f"{self.dashboard_prefix.rstrip('/')}/{cluster.name}"]
        return command

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
    from .data.service import federation_runs, session_environment

    kubernetes = settings["sessions"]["spawner"] == "kubernetes"
    options = ClusterOptionsFactory(
        options=dask["options"], limits=dask["limits"], profiles=settings["profiles"],
        kubernetes=kubernetes, platform_bin=venv_bin,
        # Workers read the federation as the sessions do (with the user's BEARER_TOKEN_FILE).
        environment=session_environment(settings) if not kubernetes and federation_runs(settings) else {},
    )
    if settings["sessions"]["spawner"] == "kubernetes":
        # The gateway's Kubernetes backend, from the same settings and the same options.
        from .dask_gateway_kubernetes import configure_kubernetes

        configure_kubernetes(c, settings, state, cluster_options=options)
        return

    c.DaskGateway.address = f"127.0.0.1:{dask['api_port']}"
    c.Proxy.address = f"127.0.0.1:{dask['port']}"
    c.DaskGateway.backend_class = "officina.hub.dask_gateway.OfficinaLocalBackend"
    c.OfficinaLocalBackend.run_as_system_accounts = settings.run_as_system_accounts
    c.OfficinaLocalBackend.homes_dir = str(state.homes)
    c.OfficinaLocalBackend.dashboard_prefix = f"{hub['base_url']}services/{DASHBOARDS_SERVICE}/clusters"
    c.OfficinaLocalBackend.clusters_directory = str(prepare_clusters_directory(state.root / "dask" / "clusters"))
    # Cluster records survive a gateway restart (encrypted with a key from the state dir).
    c.DBBackendBase.db_url = f"sqlite:///{gateway_db(state)}"
    c.DBBackendBase.db_cleanup_period = 600
    c.ClusterConfig.scheduler_cmd = [str(venv_bin / "dask"), "scheduler"]
    c.ClusterConfig.worker_cmd = [str(venv_bin / "dask"), "worker"]
    c.ClusterConfig.idle_timeout = dask["idle_timeout"]
    c.ClusterConfig.scheduler_cores = SCHEDULER_CORES
    c.ClusterConfig.scheduler_memory = SCHEDULER_MEMORY
    c.OfficinaLocalBackend.dask_limits = dask["limits"]
    c.Backend.cluster_options = options
    c.OfficinaLocalBackend.inherited_environment = ["LANG", "LC_ALL"]
    c.ClusterConfig.environment = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", **options.environment}

    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = f"http://127.0.0.1:{hub['internal_port']}{hub['base_url']}hub/api"
    c.JupyterHubAuthenticator.jupyterhub_service_name = GATEWAY_SERVICE
    # The gateway's own hub token arrives in JUPYTERHUB_API_TOKEN (environment, not argv).



