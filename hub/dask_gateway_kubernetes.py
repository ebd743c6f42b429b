"""Dask clusters on Kubernetes: dask-gateway's own `KubeBackend`, configured from the same
platform settings as the local backend (dask_gateway.py), and rendered offline.

The gateway writes a `DaskCluster` object per cluster; dask-gateway's controller
(`dask-gateway-kube-controller`) turns it into a Secret with the cluster's TLS key pair and
API token, a scheduler Pod and Service and the worker Pods. Nothing of that is rewritten here:
`OfficinaKubeBackend` only adds to each cluster's configuration what the platform requires of
every cluster (`apply_platform_policy`): pods that run as the session user, never root, and on
the workers the user's home claim (the one KubeSpawner mounts in their sessions), read-only at
the same path, so that `BEARER_TOKEN_FILE` names the token file the user's session keeps fresh.

`render_cluster_manifests` runs the controller's real create path for a sample cluster
against a stand-in for the Kubernetes API that only keeps what it is sent, so the objects
tested are the ones a real controller would send.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from types import SimpleNamespace
from unittest import mock

from dask_gateway_server.backends.kubernetes import backend as kube_backend_module
from dask_gateway_server.backends.kubernetes.backend import KubeBackend
from dask_gateway_server.backends.kubernetes.utils import merge_json_objects
from kubespawner.slugs import safe_slug
from traitlets.config import Config

from .dask_services import GATEWAY_SERVICE
from .kubernetes import HOME_MOUNT_PATH, HOME_VOLUME, SESSION_GID, SESSION_UID, run_coroutine
from .profiles import Catalogue
from .settings import SettingsError

# The claim KubeSpawner mounts as a user's home (OfficinaKubeSpawner.pvc_name_template),
# `{username}` being KubeSpawner's safe slug of the hub username (48 characters at most,
# hashed when escaped, so two users never share a claim).
HOME_CLAIM_TEMPLATE = "home-{username}"
_KUBESPAWNER_SLUG_LENGTH = 48
# Where a session keeps the user's fresh access token (hub_config: the session's
# BEARER_TOKEN_FILE); workers see the same home at the same path.
TOKEN_FILE = f"{HOME_MOUNT_PATH}/.officina/bearer_token"

# The hub as pods reach it: the Service name and port the JupyterHub Helm chart gives it
# (the same as kubernetes.offline_spawner's Hub).
HUB_SERVICE_HOST = "hub"
HUB_SERVICE_PORT = 8081
# The gateway's API as the controller and the schedulers reach it: a Service of this name,
# in the platform's namespace, in front of the gateway's port 8000.
GATEWAY_API_SERVICE = "dask-gateway-api"
GATEWAY_API_PORT = 8000
# Labels every object of this gateway (gateway.dask.org/instance); the controller watches
# only those.
GATEWAY_INSTANCE = "officina"

# Scheduler and workers run as the session image's unprivileged user and pass the
# "restricted" Pod Security Standard, like the sessions (kubernetes.py). No fsGroup: the home
# is mounted read-only, and an fsGroup would make the kubelet walk (and chown) the whole
# home at every worker start, while what the session wrote there is already jovyan's, the
# user the workers run as.
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": SESSION_UID,
    "runAsGroup": SESSION_GID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}

_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def session_namespace() -> str:
    """The namespace the hub's sessions run in: KubeSpawner's default (the namespace of the
    pod it runs in, else `default`), which the platform does not override."""
    if os.path.exists(_SERVICE_ACCOUNT_NAMESPACE):
        with open(_SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip()
    return "default"


def home_claim_name(username: str) -> str:
    """The PersistentVolumeClaim KubeSpawner creates as `username`'s home."""
    return HOME_CLAIM_TEMPLATE.format(username=safe_slug(username, max_length=_KUBESPAWNER_SLUG_LENGTH))


def default_cluster_image(raw_profiles: list[dict]) -> str:
    """The image of the catalogue's default CPU profile (else its first CPU profile):
    clusters run the software of the sessions most users start."""
    cpu_profiles = [p for p in Catalogue(raw_profiles).profiles if not p.needs_gpu]
    if not cpu_profiles:
        raise SettingsError("profiles: Dask clusters on Kubernetes need at least one CPU profile (their image runs the clusters)")
    return next((p for p in cpu_profiles if p.default), cpu_profiles[0]).image


def apply_platform_policy(config, username: str) -> None:
    """What every cluster of `username` gets, whatever its options say: scheduler and workers
    run as the session user, not root, and workers mount the user's home read-only and have
    BEARER_TOKEN_FILE.

    `config` is the cluster's KubeClusterConfig after the cluster options were applied. The
    additions are merged into what the options or the operator set (lists appended, and the
    security settings here win), so an options handler cannot drop them by setting its own
    pod config."""
    for role in ("scheduler", "worker"):
        pod, container = {}, {}
        if role == "worker":
            pod["volumes"] = [
                {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": home_claim_name(username), "readOnly": True}}
            ]
            container["volumeMounts"] = [{"name": HOME_VOLUME, "mountPath": HOME_MOUNT_PATH, "readOnly": True}]
            # Workers only: the scheduler has no home, so no token file to point at.
            container["env"] = [{"name": "BEARER_TOKEN_FILE", "value": TOKEN_FILE}]
        for trait, additions, security in (
            (f"{role}_extra_pod_config", pod, POD_SECURITY_CONTEXT),
            (f"{role}_extra_container_config", container, CONTAINER_SECURITY_CONTEXT),
        ):
            merged = merge_json_objects(getattr(config, trait), additions)
            # Key by key, replacing (a merge would append to an options' `capabilities.add`).
            merged["securityContext"] = {**merged.get("securityContext", {}), **copy.deepcopy(security)}
            setattr(config, trait, merged)
    # One BEARER_TOKEN_FILE per container: the cluster's environment does not get to point
    # the workers at another file.
    config.environment = {k: v for k, v in config.environment.items() if k != "BEARER_TOKEN_FILE"}


class OfficinaKubeBackend(KubeBackend):
    """dask-gateway's KubeBackend, with the platform's policy applied to every cluster."""

    async def process_cluster_options(self, user, request):
        options, config = await super().process_cluster_options(user, request)
        apply_platform_policy(config, user.name)
        return options, config


def configure_kubernetes(c, settings, state=None, *, cluster_options=None, namespace: str | None = None) -> None:
    """dask-gateway-server's configuration for `sessions.spawner: kubernetes`, from the same
    settings as the local backend. Run after dask_gateway.configure: whatever it set for local
    processes (commands from the platform's venv, PATH) is replaced here.

    `state` is not read: on Kubernetes the gateway's hub token reaches it from a Secret (the
    JUPYTERHUB_API_TOKEN environment variable) and each cluster's TLS key pair and API token
    live in the Secret the controller creates; nothing secret goes into this configuration.
    `namespace`: where clusters run, default the sessions' namespace (their homes are there).
    """
    hub, dask = settings["hub"], settings["dask"]
    namespace = namespace or session_namespace()
    gateway_api_url = f"http://{GATEWAY_API_SERVICE}.{namespace}:{GATEWAY_API_PORT}/api"

    c.DaskGateway.backend_class = "officina.hub.dask_gateway_kubernetes.OfficinaKubeBackend"
    # In its pod: reached by the proxy (traefik), the controller and the schedulers.
    c.DaskGateway.address = f":{GATEWAY_API_PORT}"
    for section in (c.KubeBackend, c.KubeController):
        section.gateway_instance = GATEWAY_INSTANCE
        section.api_url = gateway_api_url
    if cluster_options is not None:
        c.Backend.cluster_options = cluster_options

    cluster = c.KubeClusterConfig
    cluster.namespace = namespace
    cluster.image = default_cluster_image(settings["profiles"])
    # Set here, not inherited: the local configuration's ClusterConfig names the platform's venv.
    cluster.scheduler_cmd = ["dask", "scheduler"]
    cluster.worker_cmd = ["dask", "worker"]
    cluster.environment = {}
    cluster.idle_timeout = dask["idle_timeout"]
    cluster.worker_cores = 1
    cluster.worker_memory = "1 G"
    cluster.scheduler_cores = 1
    cluster.scheduler_memory = "1 G"

    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = (
        f"http://{HUB_SERVICE_HOST}:{HUB_SERVICE_PORT}{hub['base_url']}hub/api"
    )
    c.JupyterHubAuthenticator.jupyterhub_service_name = GATEWAY_SERVICE


# --- offline rendering -------------------------------------------------------------------

# A sample cluster's name (the backend makes a random one), so that a render is reproducible.
SAMPLE_CLUSTER_ID = uuid.UUID("0ff1c1a0-da5c-4000-8000-000000000001")


class _OfflineCoreApi:
    """Stands in for the Kubernetes API: keeps what it is sent (the object as sent, with the
    namespace of the request) and answers as the API server would, with a uid."""

    def __init__(self):
        self.sent: list[dict] = []

    def _create(self, kind: str, namespace: str, body: dict):
        manifest = copy.deepcopy(body)
        # The typed endpoints (create_namespaced_service) need neither in the body.
        manifest.setdefault("apiVersion", "v1")
        manifest.setdefault("kind", kind)
        manifest["metadata"]["namespace"] = namespace
        self.sent.append(manifest)
        stored = copy.deepcopy(manifest)
        stored["metadata"].setdefault("name", stored["metadata"].get("generateName", "") + "offline")
        stored["metadata"]["uid"] = str(uuid.uuid5(SAMPLE_CLUSTER_ID, f"{kind}/{stored['metadata']['name']}"))
        return SimpleNamespace(manifest=stored, metadata=SimpleNamespace(name=stored["metadata"]["name"]))

    async def create_namespaced_secret(self, namespace, body):
        return self._create("Secret", namespace, body)

    async def create_namespaced_pod(self, namespace, body):
        return self._create("Pod", namespace, body)

    async def create_namespaced_service(self, namespace, body):
        return self._create("Service", namespace, body)


# What the controller sends for a new cluster with one worker, in order.
_CONTROLLER_CREATES = [
    ("Secret", "credentials"),
    ("Pod", "dask-scheduler"),
    ("Service", "dask-scheduler"),
    ("Pod", "dask-worker"),
]


async def _render_cluster(settings, username, groups, options, config) -> dict:
    from dask_gateway_server.backends.kubernetes.controller import ClusterInfo, KubeController
    from dask_gateway_server.models import User

    if config is None:
        c = Config()
        configure_kubernetes(c, settings)
    else:
        c = copy.deepcopy(config)
    c.KubeController.log_level = "WARN"
    backend = OfficinaKubeBackend(config=c)
    user = User(username, groups=groups)
    # What KubeBackend.start_cluster does before it creates the DaskCluster object.
    requested, cluster_config = await backend.process_cluster_options(user, options or {})
    with mock.patch.object(kube_backend_module, "uuid", SimpleNamespace(uuid4=lambda: SAMPLE_CLUSTER_ID)):
        cluster = backend.make_cluster_object(user.name, requested, cluster_config)
    # The object as the controller reads it back: JSON, with what the API server adds.
    cluster = json.loads(json.dumps(cluster))
    cluster["metadata"].update(
        namespace=cluster_config.namespace, uid=str(uuid.uuid5(SAMPLE_CLUSTER_ID, "DaskCluster"))
    )

    controller = KubeController(config=c)
    api = _OfflineCoreApi()
    controller.core_client = api
    controller.api_client = SimpleNamespace(sanitize_for_serialization=lambda created: created.manifest)
    # The controller's own steps for a new cluster (handle_pending_cluster, then
    # handle_running_cluster once the scheduler runs), for one worker.
    await controller.create_secret_if_not_exists(cluster)
    _, scheduler = await controller.create_scheduler_pod_if_not_exists(cluster)
    await controller.create_service_if_not_exists(cluster, scheduler)
    await controller.handle_scale_up(cluster, scheduler, ClusterInfo(), replicas=1, delta=1)

    kinds = [(m["kind"], m["metadata"].get("labels", {}).get("app.kubernetes.io/component")) for m in api.sent]
    if kinds != _CONTROLLER_CREATES:
        raise RuntimeError(f"dask-gateway's controller no longer creates {_CONTROLLER_CREATES} for a cluster: {kinds}")
    secret, scheduler_pod, service, worker_pod = api.sent
    return {"cluster": cluster, "secret": secret, "scheduler": scheduler_pod, "service": service, "worker": worker_pod}


def render_cluster_manifests(settings, username: str, groups=(), options: dict | None = None, *, config=None) -> dict:
    """The objects a cluster of `username` (in `groups`, asking for `options`) becomes on
    Kubernetes, rendered offline: `cluster` (the DaskCluster the gateway creates), and what
    the controller then creates from it: `secret` (a fresh TLS key pair and API token),
    `scheduler` (Pod), `service` (the scheduler's) and `worker` (one worker Pod).

    `config`: the gateway's configuration (what dask_gateway.configure builds, cluster
    options included); default: `configure_kubernetes` of `settings` alone, no options."""
    return run_coroutine(_render_cluster(settings, username, list(groups), options, config))

