"""The resource manager assembled from the platform settings (kinds, backends, quotas)."""

from __future__ import annotations

import pwd
from pathlib import Path

from ..accounts import system_account_name
from ..condor.pool import host_can_run_condor
from ..settings import Settings
from ..state import StateDir
from .contract import BackendError, Owner
from .kinds import KindSpec
from .manager import Engine, RecordStore

KIND_TITLES = {"spark": "Spark cluster", "condor": "HTCondor workers", "model": "DEEPaaS model server",
               "app": "Published Voila app"}


def engine_from_settings(raw_settings: dict) -> Engine:
    settings = Settings(raw=raw_settings, source="resource manager")
    state = StateDir(settings.state_dir)
    resources = settings["resources"]
    root = state.root / "resources"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # each resource's own folder is the user's and 0700

    kinds = {"spark": KindSpec.from_settings("spark", KIND_TITLES["spark"], resources["spark"]["options"])}
    prefix = f"{settings['hub']['base_url']}services/resources/ui/{{id}}"
    if settings["sessions"]["spawner"] == "kubernetes":
        backends = kubernetes_backends(settings, kinds, prefix)
    else:
        backends = local_backends(settings, state, root, kinds, prefix)
    system_accounts = settings.run_as_system_accounts

    def owner_of(username: str, groups) -> Owner:
        home = state.homes / username
        account = None
        if system_accounts:
            account = system_account_name(username)
            try:
                pwd.getpwnam(account)
            except KeyError:
                raise BackendError(f"{username} has no session account yet: start a session once first") from None
        return Owner(name=username, groups=tuple(groups), account=account, home=str(home),
                     token_file=str(Path(home) / ".officina" / "bearer_token"))

    return Engine(store=RecordStore(root / "records"), kinds=kinds, backends=backends,
                  limits=resources["limits"], owner_of=owner_of, idle_timeout=resources["idle_timeout"])


def local_backends(settings: Settings, state: StateDir, root: Path, kinds: dict, prefix: str) -> dict:
    """Processes on this machine, as the owners' accounts; HTCondor workers where the
    supervisor runs the embedded pool (the same test it makes)."""
    from .spark_local import LocalSparkBackend

    work = root / "spark"
    work.mkdir(exist_ok=True)
    work.chmod(0o711)
    backends = {"spark": LocalSparkBackend(work_root=work, ui_prefix=prefix)}
    from .model_local import LocalModelBackend

    models = root / "model"
    models.mkdir(exist_ok=True)
    models.chmod(0o711)
    kinds["model"] = KindSpec.for_models(settings["resources"]["model"])
    backends["model"] = LocalModelBackend(models, settings["resources"]["model"]["env"])
    from .app_local import HubTokens, LocalAppBackend

    apps = root / "app"
    apps.mkdir(exist_ok=True)
    apps.chmod(0o711)
    kinds["app"] = KindSpec.for_apps(settings["resources"]["app"])
    base_url = settings["hub"]["base_url"]
    backends["app"] = LocalAppBackend(
        apps, public_prefix=f"{base_url}services/resources/apps/", tokens=HubTokens(),
        resources_url=f"http://127.0.0.1:{settings['resources']['port']}{base_url}services/resources/",
        token_lifetime=settings["resources"]["app"]["token_lifetime"])
    condor = settings["condor"]
    if condor["enabled"] is not False and host_can_run_condor(Path(condor["root"]))[0]:
        from .condor_local import LocalCondorBackend, pool_for

        kinds["condor"] = KindSpec.from_settings("condor", KIND_TITLES["condor"], settings["resources"]["condor"]["options"])
        backends["condor"] = LocalCondorBackend(pool_for(condor, state.root, state.homes))
    return backends


def kubernetes_backends(settings: Settings, kinds: dict, prefix: str) -> dict:
    """Pods in the sessions' namespace (the hub's service account needs the RBAC of
    helm/: pods, services, secrets, configmaps, deployments, networkpolicies). Spark runs the
    default CPU profile's image (the driver's own pyspark must match); HTCondor workers join
    the pool's collector (render it with `python -m officina.hub.resources.kubernetes
    --kind condor-pool`)."""
    from ..dask_gateway_kubernetes import default_cluster_image, session_namespace
    from .kubernetes import KubernetesAsyncioApi, KubernetesCondorBackend, KubernetesModelBackend, KubernetesSparkBackend

    api = KubernetesAsyncioApi()
    namespace = session_namespace()
    backends = {"spark": KubernetesSparkBackend(api, namespace=namespace, image=default_cluster_image(settings["profiles"]),
                                                ui_prefix=prefix)}
    kinds["model"] = KindSpec.for_models(settings["resources"]["model"])
    backends["model"] = KubernetesModelBackend(api, namespace=namespace)
    from .app_local import HubTokens
    from .kubernetes import KubernetesAppBackend

    # Apps run the default CPU profile's image (the sessions' Python and kernels); their
    # kernels reach the manager through the hub's public address, as sessions' clients do.
    kinds["app"] = KindSpec.for_apps(settings["resources"]["app"])
    backends["app"] = KubernetesAppBackend(
        api, namespace=namespace, image=default_cluster_image(settings["profiles"]), tokens=HubTokens(),
        token_lifetime=settings["resources"]["app"]["token_lifetime"],
        public_prefix=f"{settings['hub']['base_url']}services/resources/apps/",
        resources_url=f"{settings.public_url}services/resources/")
    if settings["condor"]["enabled"] is not False:
        kinds["condor"] = KindSpec.from_settings("condor", KIND_TITLES["condor"], settings["resources"]["condor"]["options"])
        backends["condor"] = KubernetesCondorBackend(api, namespace=namespace)
    return backends
