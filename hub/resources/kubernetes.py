"""The resource manager's Kubernetes backend: Spark clusters, HTCondor workers and DEEPaaS model
servers as Kubernetes objects, rendered by pure functions and made through a small API object.

Rendering (`render_spark_cluster`, `render_condor_workers`, `render_condor_pool`,
`render_model_server`) is separate from doing (`KubernetesSparkBackend`,
`KubernetesCondorBackend`, `KubernetesModelBackend` over a `KubernetesApi`), so that
every object is checked offline against the Kubernetes schemas and an operator can print what
a user's resource becomes (`python -m officina.hub.resources.kubernetes`) without a cluster.

What every resource's pods get, whatever the kind:
- the session user's identity, never root: SESSION_UID/GID, runAsNonRoot, no privilege
  escalation, no capabilities, the RuntimeDefault seccomp profile (the "restricted" Pod
  Security Standard, as sessions and Dask clusters), no service account token, no service
  links;
- labels naming the resource, its kind and its owner (`officina/resource`, `officina/kind`,
  `officina/owner` with KubeSpawner's label slug of the hub user), by which `stop` finds and
  deletes everything, also what a start that died half-way made;
- a NetworkPolicy that admits only the owner's session pods (the labels KubeSpawner gives
  them: `hub.jupyter.org/username` and `component: singleuser-server`) and the resource's
  own pods; a model server's admits the hub's pod only (everyone calls it through the
  resource manager's authenticating proxy). NetworkPolicies add up: one that allows more in
  the same namespace (an allow-all) makes this one moot, and a CNI without NetworkPolicy
  support ignores them.

Secrets: a Spark cluster's shared secret exists in its Secret's `data` only and reaches the
daemons as a file (SPARK_CONF_DIR/spark-defaults.conf, mode 0400 made group-readable by the
kubelet for fsGroup); never in an environment, an argument, an annotation or a ConfigMap.
HTCondor's signing key and tokens are never rendered here: the pool and the workers refer to
Secrets by name, which the operator (key, daemon token) and the platform's token minting
(execute tokens) create; see `render_condor_pool` for the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import re
import secrets
import sys
import threading
import time
import urllib.request
from typing import Protocol

import yaml
from kubespawner.slugs import is_valid_label, safe_slug

from ..accounts import system_account_name
from ..condor import config as condor_config
from ..dask_gateway_kubernetes import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TOKEN_FILE,
    default_cluster_image,
    home_claim_name,
    session_namespace,
)
from ..kubernetes import HOME_MOUNT_PATH, HOME_VOLUME, SESSION_GID, SESSION_UID
from .contract import BackendError, Owner, Resource
from .spark_local import DAEMON_PROPERTIES, MASTER_CLASS, WORKER_CLASS

STATE_VERSION = 1
MIB = 1024

# --- labels ----------------------------------------------------------------------------

RESOURCE_LABEL = "officina/resource"
KIND_LABEL = "officina/kind"
OWNER_LABEL = "officina/owner"
COMPONENT_LABEL = "app.kubernetes.io/component"
# What KubeSpawner labels a user's session pod with (KubeSpawner._build_pod_labels): the
# user's label-safe slug, and its component label (KubeSpawner.component_label's default).
SESSION_USERNAME_LABEL = "hub.jupyter.org/username"
SESSION_COMPONENT_LABELS = {"component": "singleuser-server"}
# The hub pod of the JupyterHub Helm chart, where the resource manager runs as a hub service:
# it proxies the Spark UI to the owner and asks the master whether it runs applications.
HUB_POD_LABELS = {"app": "jupyterhub", "component": "hub"}
# The name KubeSpawner annotates pods with: the hub username as is (labels hold a slug).
OWNER_ANNOTATION = "officina/owner-name"

# A resource id is the manager's `secrets.token_hex(6)`; anything else never becomes a name.
_RESOURCE_ID = re.compile(r"^[a-z0-9]{1,20}$")

# --- Spark -----------------------------------------------------------------------------

SPARK_PORT = 7077
SPARK_UI_PORT = 8080
SPARK_WORKER_PORT = 7078
SPARK_WORKER_UI_PORT = 8081
SPARK_CONF_DIR = "/etc/spark/conf"
SPARK_CONF_FILE = "spark-defaults.conf"
SPARK_SCRATCH = "/tmp/spark"
# Heap of the daemons themselves (SPARK_DAEMON_MEMORY); executors get worker_memory.
SPARK_MASTER_HEAP_MIB = 512
SPARK_WORKER_HEAP_MIB = 256
# What a JVM takes beyond its heap (metaspace, threads, buffers), for the daemons.
JVM_NON_HEAP_MIB = 256
# Spark's own rule for an executor's memory beyond its heap (spark.executor.memoryOverhead on
# YARN and Kubernetes): 10 % of the heap, at least 384 MiB.
EXECUTOR_OVERHEAD_MIN_MIB = 384
# Signals and zombies: tini (the notebook image's PID 1) in front of the JVM, which starts
# executors and Python workers as its children.
TINI = ["tini", "-g", "--"]

# --- HTCondor --------------------------------------------------------------------------

# HTCondor's own images from Docker Hub, the 24.0 long-term series (the embedded pool runs
# Debian's 23 and the sessions the 25 bindings; all speak the same protocol). Not checked
# from here (no registry is reachable): confirm each tag with
# `docker buildx imagetools inspect htcondor/execute:24.0-el9`. Their daemons run here as
# the session uid, not as root (see render_condor_workers).
CONDOR_IMAGE_TAG = "24.0-el9"
CONDOR_EXECUTE_IMAGE = f"htcondor/execute:{CONDOR_IMAGE_TAG}"
CONDOR_CENTRAL_MANAGER_IMAGE = f"htcondor/cm:{CONDOR_IMAGE_TAG}"
CONDOR_SUBMIT_IMAGE = f"htcondor/submit:{CONDOR_IMAGE_TAG}"
CONDOR_PORT = 9618
COLLECTOR_SERVICE = "officina-condor"
CONDOR_CONFIG_DIR = "/etc/condor/config.d"
CONDOR_TOKENS_DIR = "/etc/condor/tokens.d"
CONDOR_LOCAL_DIR = "/var/lib/condor"
# Folders the daemons need under LOCAL_DIR before they start (an emptyDir is empty).
CONDOR_LOCAL_FOLDERS = ("log", "spool", "execute", "lock", "run")
# Memory of the daemons of an execute node (master, startd, a starter per job).
CONDOR_DAEMON_OVERHEAD_MIB = 256
# Made by the operator (see render_condor_pool): the pool's signing key (file POOL), and a
# token of the daemons' identity, condor@officina.
POOL_KEY_SECRET = "officina-condor-pool-key"
DAEMON_TOKEN_SECRET = "officina-condor-daemon-token"
TOKEN_KEY = "token"
# What an execute node's token may do: advertise itself, read the pool. Its jobs run as the
# daemons' uid and can read it; with only these rights, and the collector binding an
# execute node's ads to the owner its token names, a stolen token only lets its owner
# advertise slots for their own jobs.
EXECUTE_TOKEN_AUTHZ = ("READ", "ADVERTISE_STARTD", "ADVERTISE_MASTER")
EXECUTE_IDENTITY_PREFIX = "execute."
POOL_CONFIG_MAP = "officina-condor-config"
POOL_COMMON_CONFIG = "10-officina-pool.conf"
CENTRAL_MANAGER = "officina-condor-central-manager"

# --- DEEPaaS model servers --------------------------------------------------------------

# Built from images/model-server/Dockerfile: models/requirements.txt (DEEPaaS and its pins,
# which the notebook images cannot hold) and the shipped models, run as 1000:100.
MODEL_SERVER_IMAGE = "officina/model-server:0.1.0"
MODEL_PORT = 5000
# Where an own package's generated distribution (its `deepaas.v2.model` entry point) is
# mounted; on PYTHONPATH after the package's parent folder, as model_local.py's `site`.
MODEL_SITE_DIR = "/opt/officina/model-site"
MODEL_OPTIONS = frozenset({"model", "package", "share_with", "worker_cores", "worker_memory"})
_PACKAGE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")

API_VERSIONS = {
    "Secret": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "Pod": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
# Stop deletes in this order: what runs first, the NetworkPolicy only once no pod is left,
# so that no pod of a resource is ever reachable unguarded.
DELETE_ORDER = ("Deployment", "Pod", "Service", "NetworkPolicy", "ConfigMap", "Secret", "PersistentVolumeClaim")


# --- names and shared pieces -----------------------------------------------------------


def check_resource_id(resource_id: str) -> str:
    if not isinstance(resource_id, str) or not _RESOURCE_ID.match(resource_id):
        raise BackendError(f"invalid resource id {resource_id!r}")
    return resource_id


def owner_label(username: str) -> str:
    """The label value KubeSpawner gives `username`'s pods (`hub.jupyter.org/username`)."""
    return safe_slug(username, is_valid=is_valid_label)


def condor_account(username: str) -> str:
    """The HTCondor identity's user part for a hub user, as the platform mints their token."""
    return system_account_name(username)


def execute_token_identity(account: str) -> str:
    """The identity of the token an execute node of `account`'s resources advertises with."""
    condor_config.schedd_local_name(account)  # validates the account name
    return f"{EXECUTE_IDENTITY_PREFIX}{account}@{condor_config.TRUST_DOMAIN}"


def execute_token_secret_name(account: str) -> str:
    """The Secret (key `token`) holding `account`'s execute token."""
    condor_config.schedd_local_name(account)
    return f"officina-condor-execute-{account}"


def worker_size(options: dict) -> tuple[int, int]:
    """(cores, MiB) of one worker, from options the manager already checked against the
    kind's declaration; checked again here, the backend being the last step before a pod."""
    unknown = sorted(set(options) - {"worker_cores", "worker_memory"})
    if unknown:
        raise BackendError(f"unknown options {unknown} (expected worker_cores and worker_memory)")
    cores, memory = options.get("worker_cores"), options.get("worker_memory")
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise BackendError(f"worker_cores must be a whole number of at least 1, not {cores!r}")
    if isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0:
        raise BackendError(f"worker_memory must be a positive number of GiB, not {memory!r}")
    return cores, max(1, round(memory * MIB))


def spark_worker_pod_memory_mib(worker_mib: int) -> int:
    """A Spark worker pod's memory: what the worker offers executors (worker_memory, as on
    local processes), the worker JVM itself, and the executors' memory beyond their heap,
    so that an executor using all it was offered is not killed by the pod's limit."""
    return worker_mib + SPARK_WORKER_HEAP_MIB + JVM_NON_HEAP_MIB + max(EXECUTOR_OVERHEAD_MIN_MIB, worker_mib // 10)


def _labels(app: str, kind: str, component: str, owner: str | None, resource_id: str | None) -> dict:
    labels = {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/part-of": "officina",
        "app.kubernetes.io/managed-by": "officina-resources",
        COMPONENT_LABEL: component,
        KIND_LABEL: kind,
    }
    if resource_id is not None:
        labels["app.kubernetes.io/instance"] = f"{kind}-{resource_id}"
        labels[RESOURCE_LABEL] = resource_id
    if owner is not None:
        labels[OWNER_LABEL] = owner_label(owner)
    return labels


def _metadata(name: str, namespace: str, labels: dict, owner: str | None = None) -> dict:
    metadata = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner is not None:
        metadata["annotations"] = {OWNER_ANNOTATION: owner}
    return metadata


def _object(kind: str, metadata: dict, **body) -> dict:
    return {"apiVersion": API_VERSIONS[kind], "kind": kind, "metadata": metadata, **body}


def _pod_security(uid: int, gid: int) -> dict:
    """The pod's: the dask clusters' context, as `uid`, with fsGroup so that the files of
    Secret volumes (root's, mode 0400) become readable by the group, and the home claim is
    not walked at each start when its top folder is already the group's (as sessions leave it)."""
    return {
        **copy.deepcopy(POD_SECURITY_CONTEXT),
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "fsGroupChangePolicy": "OnRootMismatch",
    }


def _container_security(uid: int, gid: int) -> dict:
    # Repeated on the container, so that each container says what it runs as on its own.
    return {
        **copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(containers: list[dict], volumes: list[dict], uid: int, gid: int, restart: str | None = None) -> dict:
    spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(uid, gid),
        "containers": containers,
        "volumes": volumes,
    }
    if restart:
        spec["restartPolicy"] = restart
    return spec


def _resources(cpu_request: str, cpu_limit: str, memory_mib: int) -> dict:
    # Memory requested = limit: a pod is never killed for using what it asked for.
    return {
        "requests": {"cpu": cpu_request, "memory": f"{memory_mib}Mi"},
        "limits": {"cpu": cpu_limit, "memory": f"{memory_mib}Mi"},
    }


def _secret_volume(name: str, secret_name: str, items: list[tuple[str, str]] | None = None) -> dict:
    source = {"secretName": secret_name, "defaultMode": 0o400}
    if items:
        source["items"] = [{"key": key, "path": path} for key, path in items]
    return {"name": name, "secret": source}


def _deployment(name: str, namespace: str, labels: dict, owner: str | None, replicas: int,
                selector: dict, pod_labels: dict, pod_spec: dict) -> dict:
    return _object(
        "Deployment", _metadata(name, namespace, labels, owner),
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": dict(selector)},
            # The template never changes: a restart replaces pods all at once.
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": dict(pod_labels)}, "spec": pod_spec},
        },
    )


def _session_selector(username: str) -> dict:
    return {"podSelector": {"matchLabels": {SESSION_USERNAME_LABEL: owner_label(username), **SESSION_COMPONENT_LABELS}}}


# --- Spark -----------------------------------------------------------------------------


def spark_names(resource_id: str) -> dict:
    check_resource_id(resource_id)
    base = f"spark-{resource_id}"
    return {
        "secret": f"{base}-conf",
        "policy": base,
        "service": base,
        "master": f"{base}-master",
        "workers": f"{base}-worker",
    }


def spark_properties(secret: str, ui_prefix: str | None) -> str:
    """spark-defaults.conf of a cluster: the local backend's daemon properties (one
    declaration), the secret, and the reverse proxy under the hub's UI route."""
    if not re.fullmatch(r"[0-9a-f]{32,}", secret or ""):
        raise BackendError("a Spark cluster's secret must be 32 or more hex digits")
    properties = dict(DAEMON_PROPERTIES, **{"spark.authenticate.secret": secret})
    if ui_prefix:
        # The master serves the workers' UIs under <prefix>/proxy/<worker id>/ and writes
        # every link with the prefix the hub's proxy serves it under.
        properties["spark.ui.reverseProxy"] = "true"
        properties["spark.ui.reverseProxyUrl"] = ui_prefix.rstrip("/")
    return "".join(f"{key} {value}\n" for key, value in properties.items())


def render_spark_cluster(
    resource: Resource,
    owner: Owner,
    *,
    namespace: str,
    image: str,
    secret: str,
    ui_prefix: str | None = None,
    uid: int = SESSION_UID,
    gid: int = SESSION_GID,
    hub_pod_labels: dict | None = None,
) -> list[dict]:
    """The objects of a Spark standalone cluster with `resource.workers` workers, in the
    order they are created: its Secret (spark-defaults.conf with `secret`), its
    NetworkPolicy (before any pod, so that none is ever reachable unguarded), the master's
    Service (7077, and 8080 for the UI), the master Pod and the workers' Deployment.

    `image`: the notebook image the owner's sessions run (Spark requires the driver's and
    the executors' pyspark to be the same); `ui_prefix`: the path the hub's proxy serves the
    master UI under (`<base>services/resources/ui/<id>`), which turns on Spark's reverse
    proxy; `hub_pod_labels`: the pod that may reach the master UI (the resource manager's).

    Workers are one Deployment: scaling is one `replicas` patch, and a worker whose pod is
    lost (node drained, evicted) is replaced and registers again. The master is a bare Pod
    that is never restarted: a master that died lost its applications, and the manager then
    marks the cluster FAILED with the reason, as for local processes."""
    names = spark_names(resource.id)
    cores, worker_mib = worker_size(resource.options)
    if resource.workers < 0:
        raise BackendError(f"cannot start {resource.workers} workers")
    conf = spark_properties(secret, ui_prefix)
    master_url = f"spark://{names['service']}.{namespace}.svc:{SPARK_PORT}"

    def labels(component: str) -> dict:
        return _labels("spark", "spark", component, owner.name, resource.id)

    conf_volume = _secret_volume("spark-conf", names["secret"])
    conf_mount = {"name": "spark-conf", "mountPath": SPARK_CONF_DIR, "readOnly": True}
    scratch_volume = {"name": "spark-scratch", "emptyDir": {}}
    scratch_mount = {"name": "spark-scratch", "mountPath": SPARK_SCRATCH}
    common_env = [
        # Every daemon binds and advertises its pod's address; the kubelet expands $(...).
        {"name": "SPARK_LOCAL_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "SPARK_CONF_DIR", "value": SPARK_CONF_DIR},
        {"name": "SPARK_LOCAL_DIRS", "value": f"{SPARK_SCRATCH}/local"},
    ]

    master = {
        "name": "spark-master",
        "image": image,
        "command": [*TINI, "spark-class", MASTER_CLASS],
        "env": [
            *common_env,
            {"name": "SPARK_MASTER_HOST", "value": "$(SPARK_LOCAL_IP)"},
            {"name": "SPARK_MASTER_PORT", "value": str(SPARK_PORT)},
            {"name": "SPARK_MASTER_WEBUI_PORT", "value": str(SPARK_UI_PORT)},
            {"name": "SPARK_DAEMON_MEMORY", "value": f"{SPARK_MASTER_HEAP_MIB}m"},
        ],
        "ports": [
            {"name": "spark", "containerPort": SPARK_PORT, "protocol": "TCP"},
            {"name": "ui", "containerPort": SPARK_UI_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"tcpSocket": {"port": "spark"}, "periodSeconds": 5},
        "resources": _resources("250m", "1", SPARK_MASTER_HEAP_MIB + JVM_NON_HEAP_MIB),
        "securityContext": _container_security(uid, gid),
        "volumeMounts": [conf_mount, scratch_mount],
    }
    worker = {
        "name": "spark-worker",
        "image": image,
        "command": [*TINI, "spark-class", WORKER_CLASS, master_url],
        "env": [
            *common_env,
            {"name": "SPARK_WORKER_CORES", "value": str(cores)},
            {"name": "SPARK_WORKER_MEMORY", "value": f"{worker_mib}m"},
            {"name": "SPARK_WORKER_PORT", "value": str(SPARK_WORKER_PORT)},
            {"name": "SPARK_WORKER_WEBUI_PORT", "value": str(SPARK_WORKER_UI_PORT)},
            {"name": "SPARK_WORKER_DIR", "value": f"{SPARK_SCRATCH}/work"},
            {"name": "SPARK_DAEMON_MEMORY", "value": f"{SPARK_WORKER_HEAP_MIB}m"},
            # Executors run the owner's code: they find the token their session keeps fresh.
            {"name": "BEARER_TOKEN_FILE", "value": TOKEN_FILE},
        ],
        "ports": [
            {"name": "worker", "containerPort": SPARK_WORKER_PORT, "protocol": "TCP"},
            {"name": "ui", "containerPort": SPARK_WORKER_UI_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(str(cores), str(cores), spark_worker_pod_memory_mib(worker_mib)),
        "securityContext": _container_security(uid, gid),
        "volumeMounts": [
            conf_mount,
            scratch_mount,
            # Read-write: executors write results where the owner's session reads them, as
            # local workers (running as the owner) do.
            {"name": HOME_VOLUME, "mountPath": HOME_MOUNT_PATH},
        ],
    }
    home_volume = {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": home_claim_name(owner.name)}}

    secret_object = _object(
        "Secret", _metadata(names["secret"], namespace, labels("configuration"), owner.name),
        type="Opaque",
        immutable=True,
        data={SPARK_CONF_FILE: base64.b64encode(conf.encode()).decode()},
    )
    policy = _object(
        "NetworkPolicy", _metadata(names["policy"], namespace, labels("network-policy"), owner.name),
        spec={
            "podSelector": {"matchLabels": {RESOURCE_LABEL: resource.id}},
            "policyTypes": ["Ingress"],
            "ingress": [
                # The cluster's own pods, and the owner's sessions (drivers), on every port:
                # executors and block managers listen on ports Spark picks.
                {"from": [{"podSelector": {"matchLabels": {RESOURCE_LABEL: resource.id}}}, _session_selector(owner.name)]},
                # The resource manager: the master's UI (the owner's proxy, the busy check).
                {
                    "from": [{"podSelector": {"matchLabels": dict(hub_pod_labels or HUB_POD_LABELS)}}],
                    "ports": [{"port": SPARK_UI_PORT, "protocol": "TCP"}],
                },
            ],
        },
    )
    service = _object(
        "Service", _metadata(names["service"], namespace, labels("master"), owner.name),
        spec={
            "type": "ClusterIP",
            "selector": {RESOURCE_LABEL: resource.id, COMPONENT_LABEL: "master"},
            "ports": [
                {"name": "spark", "port": SPARK_PORT, "targetPort": "spark", "protocol": "TCP"},
                {"name": "ui", "port": SPARK_UI_PORT, "targetPort": "ui", "protocol": "TCP"},
            ],
        },
    )
    master_pod = _object(
        "Pod", _metadata(names["master"], namespace, labels("master"), owner.name),
        spec=_pod_spec([master], [conf_volume, scratch_volume], uid, gid, restart="Never"),
    )
    workers = _deployment(
        names["workers"], namespace, labels("worker"), owner.name, resource.workers,
        {RESOURCE_LABEL: resource.id, COMPONENT_LABEL: "worker"}, labels("worker"),
        _pod_spec([worker], [conf_volume, scratch_volume, home_volume], uid, gid),
    )
    return [secret_object, policy, service, master_pod, workers]


# --- HTCondor --------------------------------------------------------------------------


def _condor_common_lines(namespace: str, collector_service: str) -> list[str]:
    """What every daemon of the pool reads, on every pod: where the collector is, the
    folders (an emptyDir), and the security model of hub/condor/config.py, less FS (daemons
    in different pods have no common file system to prove an account with): IDTOKENS only,
    authentication, integrity and encryption required, nothing anonymous, no token fetched
    or requested from a daemon, WRITE for the daemons only."""
    domain = condor_config.TRUST_DOMAIN
    daemons = " ".join(condor_config.DAEMON_IDENTITIES)
    executes = f"{EXECUTE_IDENTITY_PREFIX}*@{domain}"
    keys = condor_config.IN_ROOT_KEYS
    return [
        "# Officina's HTCondor pool on Kubernetes (officina.hub.resources.kubernetes).",
        f"CONDOR_HOST = {collector_service}.{namespace}.svc",
        f"COLLECTOR_HOST = $(CONDOR_HOST):{CONDOR_PORT}",
        "USE_SHARED_PORT = True",
        f"SHARED_PORT_PORT = {CONDOR_PORT}",
        "MAIL = /bin/true",
        f"UID_DOMAIN = {domain}",
        f"FILESYSTEM_DOMAIN = {domain}",
        f"TRUST_DOMAIN = {domain}",
        f"LOCAL_DIR = {CONDOR_LOCAL_DIR}",
        "LOG = $(LOCAL_DIR)/log",
        "SPOOL = $(LOCAL_DIR)/spool",
        "EXECUTE = $(LOCAL_DIR)/execute",
        "LOCK = $(LOCAL_DIR)/lock",
        "RUN = $(LOCAL_DIR)/run",
        "",
        f"SEC_PASSWORD_DIRECTORY = {keys}",
        f"SEC_TOKEN_POOL_SIGNING_KEY_FILE = {keys}/{condor_config.POOL_KEY_NAME}",
        # The daemons run as a uid without a home: their token is where the Secret is mounted.
        f"SEC_TOKEN_DIRECTORY = {CONDOR_TOKENS_DIR}",
        f"SEC_TOKEN_SYSTEM_DIRECTORY = {CONDOR_TOKENS_DIR}",
        "SEC_DEFAULT_AUTHENTICATION = REQUIRED",
        "SEC_DEFAULT_INTEGRITY = REQUIRED",
        "SEC_DEFAULT_ENCRYPTION = REQUIRED",
        "SEC_DEFAULT_AUTHENTICATION_METHODS = IDTOKENS",
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS",
        "SEC_READ_AUTHENTICATION = REQUIRED",
        "SEC_CLIENT_AUTHENTICATION = REQUIRED",
        "SEC_ENABLE_TOKEN_FETCH = False",
        "SEC_ENABLE_TOKEN_REQUEST = False",
        "SEC_ENABLE_IMPERSONATION_TOKENS = False",
        # A schedd reaches the startd it was matched with through the claim's own secret.
        "SEC_ENABLE_MATCH_PASSWORD_AUTHENTICATION = True",
        f"ALLOW_READ = *@{domain}",
        f"ALLOW_WRITE = {daemons}",
        f"ALLOW_DAEMON = {daemons}",
        f"ALLOW_NEGOTIATOR = {daemons}",
        f"ALLOW_ADVERTISE_MASTER = {daemons} {executes}",
        f"ALLOW_ADVERTISE_SCHEDD = {daemons}",
        f"ALLOW_ADVERTISE_STARTD = {daemons} {executes}",
        f"ALLOW_ADMINISTRATOR = {daemons}",
        f"ALLOW_CONFIG = {condor_config.DAEMON_IDENTITIES[1]}",
        "",
    ]


def collector_requirements() -> str:
    """The collector refuses an ad that claims an owner (OfficinaOwner) unless the token it
    came with is that owner's execute token (the collector stamps AuthenticatedIdentity on
    every ad): a token read by a job on an execute node only advertises slots of its owner.
    Unqualified names: the collector evaluates it on the ad alone, where no `MY` scope exists
    (an undefined `MY.OfficinaOwner` would make every ad pass)."""
    return (
        "(OfficinaOwner =?= undefined) || "
        f'(AuthenticatedIdentity =?= strcat("{EXECUTE_IDENTITY_PREFIX}", OfficinaOwner, "@{condor_config.TRUST_DOMAIN}"))'
    )


def owner_slots_transform_lines() -> list[str]:
    """A schedd-side transform of every submitted job: it runs only on slots advertised for
    its Owner. With `collector_requirements`, no one's slots can attract someone else's job;
    on Kubernetes every slot belongs to a user's resource."""
    return [
        "JOB_TRANSFORM_NAMES = OfficinaOwnSlots",
        "JOB_TRANSFORM_OfficinaOwnSlots @=end",
        "   COPY Requirements OfficinaRequirements",
        "   SET Requirements (MY.OfficinaRequirements) && (TARGET.OfficinaOwner =?= MY.Owner)",
        "@end",
    ]


def render_condor_execute_config(resource_id: str, account: str, cores: int, memory_mib: int) -> str:
    """The role of one execute node of `account`'s resource: one partitionable slot of
    `cores` and `memory_mib`, only `account`'s jobs start (as the local backend's workers)."""
    check_resource_id(resource_id)
    condor_config.schedd_local_name(account)
    lines = [
        f"# An execute node of resource {resource_id}, for {account} only.",
        "use ROLE: Execute",
        f"NUM_CPUS = {cores}",
        f"MEMORY = {memory_mib}",
        "NUM_SLOTS = 1",
        "NUM_SLOTS_TYPE_1 = 1",
        "SLOT_TYPE_1 = 100%",
        "SLOT_TYPE_1_PARTITIONABLE = True",
        "RUNBENCHMARKS = 0",
        f'OfficinaResource = "{resource_id}"',
        f'OfficinaOwner = "{account}"',
        "STARTD_ATTRS = $(STARTD_ATTRS) OfficinaResource OfficinaOwner START",
        "MASTER_ATTRS = $(MASTER_ATTRS) OfficinaResource OfficinaOwner",
        f'START = (TARGET.Owner == "{account}")',
        # Not root: jobs run as the pod's uid, in a pod that only this owner's jobs reach.
        "STARTER_ALLOW_RUNAS_OWNER = False",
        "UPDATE_INTERVAL = 10",
        "STARTER_UPDATE_INTERVAL = 10",
        "",
    ]
    return "\n".join(lines)


def _condor_container(name: str, image: str, cores: str, cores_limit: str, memory_mib: int, mounts: list[dict],
                      uid: int, gid: int) -> dict:
    folders = " ".join(f"{CONDOR_LOCAL_DIR}/{folder}" for folder in CONDOR_LOCAL_FOLDERS)
    return {
        "name": name,
        "image": image,
        # condor_master in the foreground as PID 1's child, with the folders an emptyDir
        # lacks; the images' own entrypoint (supervisord as root) is not used.
        "command": ["/bin/sh", "-c", f"mkdir -p {folders} && exec condor_master -f"],
        "ports": [{"name": "condor", "containerPort": CONDOR_PORT, "protocol": "TCP"}],
        "resources": _resources(cores, cores_limit, memory_mib),
        "securityContext": _container_security(uid, gid),
        "volumeMounts": mounts,
    }


def render_condor_workers(
    resource: Resource,
    owner: Owner,
    *,
    namespace: str,
    image: str = CONDOR_EXECUTE_IMAGE,
    collector_service: str = COLLECTOR_SERVICE,
    token_secret: str | None = None,
    uid: int = SESSION_UID,
    gid: int = SESSION_GID,
) -> list[dict]:
    """The objects of an "HTCondor workers" resource: its configuration (ConfigMap), its
    NetworkPolicy, and a Deployment of `resource.workers` execute nodes (condor_master and
    condor_startd), each one partitionable slot of worker_cores and worker_memory that
    advertises `OfficinaResource = "<id>"` and `OfficinaOwner = "<account>"` and starts only
    the owner's jobs. They join the pool's collector (`collector_service`, in `namespace`)
    with the owner's execute token, a file from the Secret `token_secret` (default
    `execute_token_secret_name(account)`), never an environment variable or an argument.

    The daemons run as `uid`, not root, so jobs run as that uid too: the pod is the owner's
    alone (START, and the schedds' transform), and the only secret in it is the execute
    token, whose rights are EXECUTE_TOKEN_AUTHZ. The image's configuration folder is
    replaced by this resource's, so nothing of the image's own settings applies."""
    names = condor_worker_names(resource.id)
    cores, memory_mib = worker_size(resource.options)
    if resource.workers < 0:
        raise BackendError(f"cannot start {resource.workers} workers")
    account = condor_account(owner.name)
    token_secret = token_secret or execute_token_secret_name(account)

    def labels(component: str) -> dict:
        return _labels("htcondor", "condor", component, owner.name, resource.id)

    config_map = _object(
        "ConfigMap", _metadata(names["config"], namespace, labels("configuration"), owner.name),
        data={
            POOL_COMMON_CONFIG: "\n".join(_condor_common_lines(namespace, collector_service)),
            "50-officina-execute.conf": render_condor_execute_config(resource.id, account, cores, memory_mib),
        },
    )
    policy = _object(
        "NetworkPolicy", _metadata(names["policy"], namespace, labels("network-policy"), owner.name),
        spec={
            "podSelector": {"matchLabels": {RESOURCE_LABEL: resource.id}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [
                    # The owner's schedd claims the slots and talks to the starters; the
                    # central manager's daemons; the resource's own nodes.
                    {"podSelector": {"matchLabels": schedd_pod_selector(account)}},
                    {"podSelector": {"matchLabels": central_manager_selector()}},
                    {"podSelector": {"matchLabels": {RESOURCE_LABEL: resource.id}}},
                ],
                "ports": [{"port": CONDOR_PORT, "protocol": "TCP"}],
            }],
        },
    )
    container = _condor_container(
        "condor-execute", image, str(cores), str(cores), memory_mib + CONDOR_DAEMON_OVERHEAD_MIB,
        [
            {"name": "condor-config", "mountPath": CONDOR_CONFIG_DIR, "readOnly": True},
            {"name": "condor-token", "mountPath": CONDOR_TOKENS_DIR, "readOnly": True},
            {"name": "condor-local", "mountPath": CONDOR_LOCAL_DIR},
        ],
        uid, gid,
    )
    volumes = [
        {"name": "condor-config", "configMap": {"name": names["config"]}},
        _secret_volume("condor-token", token_secret, [(TOKEN_KEY, "officina-execute")]),
        {"name": "condor-local", "emptyDir": {}},
    ]
    deployment = _deployment(
        names["workers"], namespace, labels("execute"), owner.name, resource.workers,
        {RESOURCE_LABEL: resource.id, COMPONENT_LABEL: "execute"}, labels("execute"),
        _pod_spec([container], volumes, uid, gid),
    )
    return [config_map, policy, deployment]


def condor_worker_names(resource_id: str) -> dict:
    check_resource_id(resource_id)
    base = f"condor-{resource_id}"
    return {"config": f"{base}-execute", "policy": base, "workers": f"{base}-execute"}


def central_manager_selector() -> dict:
    return {KIND_LABEL: "condor-pool", COMPONENT_LABEL: "central-manager"}


def schedd_pod_selector(account: str) -> dict:
    return {KIND_LABEL: "condor-pool", COMPONENT_LABEL: "schedd", "officina/account": account}


def render_condor_schedd_config(account: str) -> str:
    """A user's own schedd, one per pod: only their identity and the daemons may read or
    write it (HTCondor cannot hide one owner's jobs from another inside a schedd), and
    every job it takes runs only on its owner's slots."""
    identity = condor_config.token_subject(account)
    allowed = " ".join([identity, *condor_config.DAEMON_IDENTITIES])
    return "\n".join([
        f"# The schedd of {account}: only that account (and the daemons) may read or write it.",
        "use ROLE: Submit",
        f"SCHEDD_NAME = {condor_config.schedd_name(account)}",
        f"ALLOW_READ = {allowed}",
        f"ALLOW_WRITE = {allowed}",
        "QUEUE_SUPER_USERS = condor",
        *owner_slots_transform_lines(),
        "SCHEDD_INTERVAL = 10",
        "",
    ])


def render_condor_central_manager_config() -> str:
    return "\n".join([
        "# The central manager: collector and negotiator.",
        "use ROLE: CentralManager",
        f"COLLECTOR_REQUIREMENTS = {collector_requirements()}",
        "NEGOTIATOR_INTERVAL = 10",
        "NEGOTIATOR_MIN_INTERVAL = 5",
        "",
    ])


def render_condor_pool(
    *,
    namespace: str,
    image: str = CONDOR_CENTRAL_MANAGER_IMAGE,
    users: list[str],
    schedd_image: str = CONDOR_SUBMIT_IMAGE,
    collector_service: str = COLLECTOR_SERVICE,
    spool_size: str = "2Gi",
    storage_class: str | None = None,
    uid: int = SESSION_UID,
    gid: int = SESSION_GID,
) -> list[dict]:
    """The pool itself on Kubernetes: a ConfigMap with every daemon's configuration, the
    central manager (collector and negotiator: a Deployment, and its Service on 9618 that
    everything finds the pool by), and for each hub user in `users` a schedd of their own
    (a Deployment with a PersistentVolumeClaim for its spool, so a restarted schedd keeps its
    queue) that only their identity may use, each behind a NetworkPolicy.

    Two Secrets are referred to, never made here (no key is ever rendered):
      kubectl create secret generic officina-condor-pool-key --from-file=POOL=<signing key>
      condor_token_create -identity condor@officina -key POOL \\
        | kubectl create secret generic officina-condor-daemon-token --from-file=token=/dev/stdin
    The central manager and the schedds hold the key (they check users' and execute nodes'
    tokens); execute nodes get an execute token only, per owner, made when the platform
    mints the owner's token:
      condor_token_create -identity execute.<account>@officina -key POOL \\
        -authz READ -authz ADVERTISE_STARTD -authz ADVERTISE_MASTER \\
        | kubectl create secret generic officina-condor-execute-<account> --from-file=token=/dev/stdin
    """
    if not users:
        raise BackendError("the pool needs at least one user (a schedd per user)")
    accounts = {}
    for username in users:
        account = condor_account(username)
        if account in accounts and accounts[account] != username:
            raise BackendError(f"users {accounts[account]!r} and {username!r} map to one account {account!r}")
        accounts[account] = username

    def labels(component: str, owner: str | None = None) -> dict:
        return _labels("htcondor", "condor-pool", component, owner, None)

    common = "\n".join(_condor_common_lines(namespace, collector_service))
    data = {POOL_COMMON_CONFIG: common, "20-central-manager.conf": render_condor_central_manager_config()}
    for account in sorted(accounts):
        data[f"20-schedd-{account}.conf"] = render_condor_schedd_config(account)
    objects = [_object("ConfigMap", _metadata(POOL_CONFIG_MAP, namespace, labels("configuration")), data=data)]

    key_and_token = [
        _secret_volume("condor-key", POOL_KEY_SECRET, [(condor_config.POOL_KEY_NAME, condor_config.POOL_KEY_NAME)]),
        _secret_volume("condor-token", DAEMON_TOKEN_SECRET, [(TOKEN_KEY, "officina-daemon")]),
    ]
    key_and_token_mounts = [
        {"name": "condor-key", "mountPath": condor_config.IN_ROOT_KEYS, "readOnly": True},
        {"name": "condor-token", "mountPath": CONDOR_TOKENS_DIR, "readOnly": True},
    ]

    def config_volume(role_file: str) -> dict:
        return {"name": "condor-config", "configMap": {
            "name": POOL_CONFIG_MAP,
            "items": [{"key": POOL_COMMON_CONFIG, "path": POOL_COMMON_CONFIG}, {"key": role_file, "path": role_file}],
        }}

    config_mount = {"name": "condor-config", "mountPath": CONDOR_CONFIG_DIR, "readOnly": True}

    cm_labels = labels("central-manager")
    objects.append(_object(
        "NetworkPolicy", _metadata(CENTRAL_MANAGER, namespace, labels("network-policy")),
        spec={
            "podSelector": {"matchLabels": central_manager_selector()},
            "policyTypes": ["Ingress"],
            # Everyone in the namespace finds the pool here (sessions' condor_status, schedds,
            # execute nodes); each command is still authenticated.
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": CONDOR_PORT, "protocol": "TCP"}]}],
        },
    ))
    objects.append(_object(
        "Service", _metadata(collector_service, namespace, cm_labels),
        spec={
            "type": "ClusterIP",
            "selector": central_manager_selector(),
            "ports": [{"name": "condor", "port": CONDOR_PORT, "targetPort": "condor", "protocol": "TCP"}],
        },
    ))
    cm = _condor_container(
        "condor-central-manager", image, "100m", "1", 512,
        [config_mount, *key_and_token_mounts, {"name": "condor-local", "mountPath": CONDOR_LOCAL_DIR}], uid, gid,
    )
    objects.append(_deployment(
        CENTRAL_MANAGER, namespace, cm_labels, None, 1, central_manager_selector(), cm_labels,
        _pod_spec([cm], [config_volume("20-central-manager.conf"), *key_and_token, {"name": "condor-local", "emptyDir": {}}],
                  uid, gid),
    ))

    for account in sorted(accounts):
        username = accounts[account]
        name = f"officina-condor-schedd-{account}"
        claim = f"officina-condor-spool-{account}"
        schedd_labels = {**labels("schedd", username), "officina/account": account}
        claim_spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spool_size}}}
        if storage_class:
            claim_spec["storageClassName"] = storage_class
        objects.append(_object("PersistentVolumeClaim", _metadata(claim, namespace, schedd_labels, username), spec=claim_spec))
        objects.append(_object(
            "NetworkPolicy", _metadata(name, namespace, labels("network-policy", username), username),
            spec={
                "podSelector": {"matchLabels": schedd_pod_selector(account)},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [
                        # The user's sessions submit; the negotiator negotiates; the user's
                        # execute nodes' starters talk back to the shadows.
                        _session_selector(username),
                        {"podSelector": {"matchLabels": central_manager_selector()}},
                        {"podSelector": {"matchLabels": {KIND_LABEL: "condor", OWNER_LABEL: owner_label(username)}}},
                    ],
                    "ports": [{"port": CONDOR_PORT, "protocol": "TCP"}],
                }],
            },
        ))
        schedd = _condor_container(
            "condor-schedd", schedd_image, "100m", "1", 512,
            [config_mount, *key_and_token_mounts, {"name": "condor-local", "mountPath": CONDOR_LOCAL_DIR},
             {"name": "condor-spool", "mountPath": f"{CONDOR_LOCAL_DIR}/spool"}],
            uid, gid,
        )
        objects.append(_deployment(
            name, namespace, schedd_labels, username, 1, schedd_pod_selector(account), schedd_labels,
            _pod_spec([schedd], [config_volume(f"20-schedd-{account}.conf"), *key_and_token,
                                 {"name": "condor-local", "emptyDir": {}},
                                 {"name": "condor-spool", "persistentVolumeClaim": {"claimName": claim}}], uid, gid),
        ))
    return objects


# --- DEEPaaS model servers --------------------------------------------------------------


def model_names(resource_id: str) -> dict:
    check_resource_id(resource_id)
    base = f"model-{resource_id}"
    return {"config": f"{base}-package", "policy": base, "service": base, "workers": f"{base}-server"}


def model_server_options(options: dict) -> tuple[str, str, int, int]:
    """(model served, package folder relative to the home or "", cores, MiB) from options the
    manager already checked against the kind's declaration (KindSpec.for_models); checked
    again here, where they become a command line, a probe path and a PYTHONPATH. The model
    served is the package folder's name for an own package, as model_local.py's."""
    unknown = sorted(set(options) - MODEL_OPTIONS)
    if unknown:
        raise BackendError(f"unknown options {unknown} (expected {', '.join(sorted(MODEL_OPTIONS))})")
    package = options.get("package") or ""
    if not isinstance(package, str):
        raise BackendError(f"package: a folder inside your home, not {package!r}")
    package = package.rstrip("/")
    if package:
        parts = package.split("/")
        if not _PACKAGE_PATH.match(package) or any(part in ("", ".", "..") for part in parts):
            raise BackendError(f"package: a folder inside your home, like models/my_model, not {package!r}")
        model = parts[-1]
        if not model.isidentifier():
            raise BackendError(f"package: {package!r} must end in a Python package name (letters, digits, _)")
    else:
        model = options.get("model")
        if not isinstance(model, str) or not model.isidentifier() or not model.isascii():
            raise BackendError(f"model: a model's entry point name, not {model!r}")
    shared = options.get("share_with") or []
    if not isinstance(shared, list) or not all(isinstance(group, str) for group in shared):
        raise BackendError(f"share_with: a list of group names, not {shared!r}")
    cores, mib = worker_size({k: v for k, v in options.items() if k in ("worker_cores", "worker_memory")})
    return model, package, cores, mib


def own_package_distribution(model: str) -> tuple[str, dict[str, str]]:
    """The dist-info folder name and files that declare an own package's entry point
    `<model> = <model>` in the `deepaas.v2.model` group (what DEEPaaS looks models up by),
    the same files model_local.py writes for a local server."""
    return f"officina_own_{model}-0.dist-info", {
        "METADATA": f"Metadata-Version: 2.1\nName: officina-own-{model}\nVersion: 0\n",
        "entry_points.txt": f"[deepaas.v2.model]\n{model} = {model}\n",
    }


def _hub_only_server(resource: Resource, owner: Owner, names: dict, namespace: str, labels, container: dict,
                     volumes: list[dict], port: int, port_name: str, uid: int, gid: int,
                     hub_pod_labels: dict | None) -> list[dict]:
    """The NetworkPolicy (before any pod), Service and one-replica Deployment of a server that
    only the hub's pod reaches: the resource manager's proxy, which checks the owner and the
    groups it is shared with, is every caller's way in (model servers, published apps)."""
    policy = _object(
        "NetworkPolicy", _metadata(names["policy"], namespace, labels("network-policy"), owner.name),
        spec={
            "podSelector": {"matchLabels": {RESOURCE_LABEL: resource.id}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": dict(hub_pod_labels or HUB_POD_LABELS)}}],
                "ports": [{"port": port, "protocol": "TCP"}],
            }],
        },
    )
    service = _object(
        "Service", _metadata(names["service"], namespace, labels("server"), owner.name),
        spec={
            "type": "ClusterIP",
            "selector": {RESOURCE_LABEL: resource.id, COMPONENT_LABEL: "server"},
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
        },
    )
    deployment = _deployment(
        names["workers"], namespace, labels("server"), owner.name, 1,
        {RESOURCE_LABEL: resource.id, COMPONENT_LABEL: "server"}, labels("server"),
        _pod_spec([container], volumes, uid, gid),
    )
    return [policy, service, deployment]


def render_model_server(
    resource: Resource,
    owner: Owner,
    *,
    namespace: str,
    image: str = MODEL_SERVER_IMAGE,
    uid: int = SESSION_UID,
    gid: int = SESSION_GID,
    hub_pod_labels: dict | None = None,
) -> list[dict]:
    """The objects of a DEEPaaS model server, in the order they are created: for an own
    package its ConfigMap (the generated distribution declaring its entry point), the
    NetworkPolicy (before any pod), the Service (5000) and a Deployment of one server,
    `deepaas-run --listen-ip 0.0.0.0 --listen-port 5000 --model-name <model>` from `image`.

    The server runs as `uid` with the owner's home claim at /home/jovyan: training runs go to
    OFFICINA_MODEL_DIR=/home/jovyan/.officina/models/<model>, so they outlive the server, and
    an own package (`options["package"]`, a folder of the home) is imported from there, its
    parent folder first on PYTHONPATH, then MODEL_SITE_DIR with the generated distribution.

    Only the hub's pod (`hub_pod_labels`), where the resource manager runs, may reach it:
    every caller, the owner or a member of a group it is shared with, goes through the
    manager's authenticating proxy, never straight from a session. A Deployment rather than a
    bare Pod: a server whose node is drained comes back (its state is in the home)."""
    names = model_names(resource.id)
    model, package, cores, mib = model_server_options(resource.options)
    if resource.workers != 1:
        raise BackendError("a model server is one server: it cannot be scaled")

    def labels(component: str) -> dict:
        return _labels("deepaas", "model", component, owner.name, resource.id)

    env = [
        {"name": "HOME", "value": HOME_MOUNT_PATH},
        # The owner's code (an own package) finds the token their session keeps fresh.
        {"name": "BEARER_TOKEN_FILE", "value": TOKEN_FILE},
        {"name": "OFFICINA_MODEL_DIR", "value": f"{HOME_MOUNT_PATH}/.officina/models/{model}"},
        {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
    ]
    mounts = [{"name": HOME_VOLUME, "mountPath": HOME_MOUNT_PATH}]
    volumes = [{"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": home_claim_name(owner.name)}}]
    objects = []
    if package:
        parent = package.rpartition("/")[0]
        env.append({"name": "PYTHONPATH",
                    "value": f"{HOME_MOUNT_PATH}/{parent}:{MODEL_SITE_DIR}" if parent else f"{HOME_MOUNT_PATH}:{MODEL_SITE_DIR}"})
        info, files = own_package_distribution(model)
        objects.append(_object(
            "ConfigMap", _metadata(names["config"], namespace, labels("configuration"), owner.name),
            immutable=True,
            data=files,
        ))
        volumes.append({"name": "model-site", "configMap": {
            "name": names["config"],
            "items": [{"key": key, "path": f"{info}/{key}"} for key in files],
        }})
        mounts.append({"name": "model-site", "mountPath": MODEL_SITE_DIR, "readOnly": True})

    server = {
        "name": "model-server",
        "image": image,
        "command": [*TINI, "deepaas-run", "--listen-ip", "0.0.0.0", "--listen-port", str(MODEL_PORT),
                    "--model-name", model],
        "env": env,
        "ports": [{"name": "api", "containerPort": MODEL_PORT, "protocol": "TCP"}],
        # Ready once the model answers its metadata (a shipped model may first train a
        # default network in an empty model folder).
        "readinessProbe": {
            "httpGet": {"path": f"/v2/models/{model}/", "port": "api"},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
        },
        "resources": _resources(str(cores), str(cores), mib),
        "securityContext": _container_security(uid, gid),
        "volumeMounts": mounts,
    }
    return [*objects, *_hub_only_server(resource, owner, names, namespace, labels, server, volumes, MODEL_PORT, "api",
                                        uid, gid, hub_pod_labels)]


APP_PORT = 8866
APP_OPTIONS = frozenset({"notebook", "share_with", "worker_cores", "worker_memory"})
APP_TOKEN_KEYS = ("voila-token", "hub-token")


def app_names(resource_id: str) -> dict:
    check_resource_id(resource_id)
    base = f"app-{resource_id}"
    return {"secret": f"{base}-tokens", "policy": base, "service": base, "workers": f"{base}-voila"}


def app_options(options: dict) -> tuple[str, int, int]:
    """(notebook relative to the home, cores, MiB), checked again where they become a
    command line and a working directory."""
    unknown = sorted(set(options) - APP_OPTIONS)
    if unknown:
        raise BackendError(f"unknown options {unknown} (expected {', '.join(sorted(APP_OPTIONS))})")
    notebook = options.get("notebook")
    if not isinstance(notebook, str) or not notebook.endswith(".ipynb") or not _PACKAGE_PATH.match(notebook) \
            or any(part in ("", ".", "..") for part in notebook.split("/")):
        raise BackendError(f"notebook: a notebook (.ipynb) inside your home, not {notebook!r}")
    cores, mib = worker_size({k: v for k, v in options.items() if k in ("worker_cores", "worker_memory")})
    return notebook, cores, mib


def render_app(
    resource: Resource,
    owner: Owner,
    *,
    namespace: str,
    image: str,
    base_url: str,
    resources_url: str,
    upstream_token: str,
    hub_token: str,
    uid: int = SESSION_UID,
    gid: int = SESSION_GID,
    hub_pod_labels: dict | None = None,
) -> list[dict]:
    """The objects of a published Voila app, in creation order: the Secret with its two
    tokens (Voila's own, which only the manager's proxy sends, and the owner's app token for
    the kernel; neither in the pod spec), the NetworkPolicy (only the hub's pod, where the
    manager's proxy runs, reaches it), the Service and a Deployment of one Voila server from
    the notebook image, as the owner's uid with their home claim, serving under `base_url`
    (the app's full public path) so pages and websockets pass the proxy unchanged."""
    names = app_names(resource.id)
    notebook, cores, mib = app_options(resource.options)
    if resource.workers != 1:
        raise BackendError("an app is one Voila server: it cannot be scaled")

    def labels(component: str) -> dict:
        return _labels("voila", "app", component, owner.name, resource.id)

    folder, _, name = f"{HOME_MOUNT_PATH}/{notebook}".rpartition("/")
    secret = _object(
        "Secret", _metadata(names["secret"], namespace, labels("configuration"), owner.name),
        type="Opaque",
        immutable=True,
        data={key: base64.b64encode(value.encode()).decode()
              for key, value in zip(APP_TOKEN_KEYS, (upstream_token, hub_token))},
    )

    def from_secret(variable: str, key: str) -> dict:
        return {"name": variable, "valueFrom": {"secretKeyRef": {"name": names["secret"], "key": key}}}

    server = {
        "name": "voila",
        "image": image,
        "command": [*TINI, "voila", name, "--no-browser", f"--port={APP_PORT}", "--Voila.ip=0.0.0.0",
                    f"--Voila.base_url={base_url}", "--Voila.auto_token=True",
                    "--VoilaConfiguration.show_tracebacks=False"],
        "workingDir": folder,
        "env": [
            {"name": "HOME", "value": HOME_MOUNT_PATH},
            {"name": "BEARER_TOKEN_FILE", "value": TOKEN_FILE},
            {"name": "OFFICINA_RESOURCES_URL", "value": resources_url},
            from_secret("JUPYTER_TOKEN", APP_TOKEN_KEYS[0]),
            from_secret("JUPYTERHUB_API_TOKEN", APP_TOKEN_KEYS[1]),
        ],
        "ports": [{"name": "voila", "containerPort": APP_PORT, "protocol": "TCP"}],
        # Voila's static files answer without its token once it listens.
        "readinessProbe": {"httpGet": {"path": f"{base_url}voila/static/voila.js", "port": "voila"},
                           "periodSeconds": 5, "timeoutSeconds": 5},
        "resources": _resources(str(cores), str(cores), mib),
        "securityContext": _container_security(uid, gid),
        "volumeMounts": [{"name": HOME_VOLUME, "mountPath": HOME_MOUNT_PATH}],
    }
    volumes = [{"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": home_claim_name(owner.name)}}]
    return [secret, *_hub_only_server(resource, owner, names, namespace, labels, server, volumes, APP_PORT, "voila",
                                      uid, gid, hub_pod_labels)]


# --- the API the backends use ----------------------------------------------------------


class KubernetesApiError(Exception):
    """The API server refused or failed a request; `status` is its HTTP status (0: none)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class KubernetesApi(Protocol):
    """The few calls the backends make, on objects as plain dicts (the API's JSON). Namespaced
    kinds of API_VERSIONS only. A real client adapter (`KubernetesAsyncioApi`) or a stand-in
    for the API server plugs in; methods block and raise KubernetesApiError."""

    def create(self, manifest: dict) -> dict:
        """Create the object (409 if it exists); returns it as stored."""

    def read(self, kind: str, namespace: str, name: str) -> dict | None:
        """The object with its status, None if there is none."""

    def patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        """A merge patch of the object (404 if there is none)."""

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete it (its dependents in the background); False if there was none."""

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict]:
        """The objects of `kind` that carry all of `labels`."""


class KubernetesAsyncioApi:
    """KubernetesApi on kubernetes_asyncio (installed with KubeSpawner), for a resource
    manager running in the cluster with a service account allowed to manage these kinds.

    The backends call from the manager's worker threads; the client lives in an event loop
    of its own, in a thread of its own (an aiohttp session belongs to one loop)."""

    METHODS = {
        "Pod": ("CoreV1Api", "pod"),
        "Service": ("CoreV1Api", "service"),
        "Secret": ("CoreV1Api", "secret"),
        "ConfigMap": ("CoreV1Api", "config_map"),
        "PersistentVolumeClaim": ("CoreV1Api", "persistent_volume_claim"),
        "Deployment": ("AppsV1Api", "deployment"),
        "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
    }

    def __init__(self, *, kubeconfig: str | None = None, timeout: float = 30.0):
        """`kubeconfig`: a kubeconfig file to use; default: the pod's service account
        (in-cluster). The client's configuration is its own: nothing global is changed."""
        self.timeout = timeout
        self.kubeconfig = kubeconfig
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubernetes-api", daemon=True)
        self._thread.start()
        # Connected at the first call: the manager starts (and says so per request) even
        # while the API's credentials are not there.
        self._client = None

    def _connected(self):
        if self._client is None:
            try:
                self._client = self._call(self._connect(self.kubeconfig))
            except Exception as exc:  # noqa: BLE001 - any configuration failure, said to the user
                raise KubernetesApiError(0, f"no Kubernetes API to talk to: {exc}") from None
        return self._client

    @staticmethod
    async def _connect(kubeconfig: str | None):
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        if kubeconfig is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration, persist_config=False)
        return client.ApiClient(configuration)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout)

    def method(self, kind: str, verb: str):
        from kubernetes_asyncio import client

        if kind not in self.METHODS:
            raise KubernetesApiError(0, f"{kind} is not a kind the resource manager handles")
        api_class, suffix = self.METHODS[kind]
        return getattr(getattr(client, api_class)(self._connected()), f"{verb}_namespaced_{suffix}")

    def _run(self, kind: str, verb: str, **arguments):
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        method = self.method(kind, verb)

        async def call():
            return self._client.sanitize_for_serialization(await method(**arguments))

        try:
            return self._call(call())
        except ApiException as exc:
            try:
                detail = json.loads(exc.body or "{}").get("message") or exc.reason
            except ValueError:
                detail = exc.reason
            raise KubernetesApiError(exc.status or 0, f"{verb} {kind}: {detail}") from None
        except (aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            message = f"{verb} {kind}: the API server does not answer: {exc or type(exc).__name__}"
            raise KubernetesApiError(0, message) from None

    def create(self, manifest: dict) -> dict:
        return self._run(manifest["kind"], "create", namespace=manifest["metadata"]["namespace"], body=manifest)

    def read(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._run(kind, "read", name=name, namespace=namespace)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        return self._run(kind, "patch", name=name, namespace=namespace, body=patch)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            self._run(kind, "delete", name=name, namespace=namespace, propagation_policy="Background")
        except KubernetesApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict]:
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        return self._run(kind, "list", namespace=namespace, label_selector=selector).get("items", [])

    def close(self) -> None:
        if self._client is not None:
            self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --- the backends ----------------------------------------------------------------------

# A pod waiting for one of these will not start without someone changing something.
_HOPELESS_WAITING = {
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError",
}


def _pod_problem(pod: dict) -> str | None:
    """Why a pod will not run, if it will not."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"it has ended ({status.get('phase')}{': ' + status['reason'] if status.get('reason') else ''})"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _HOPELESS_WAITING:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return f"its container exited ({terminated.get('reason', 'exit code ' + str(terminated.get('exitCode')))})"
    return None


def _pod_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and all(c.get("ready") for c in status.get("containerStatuses") or [{}])


def _pending_reason(pod: dict) -> str:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            return condition["message"]
    return (pod.get("status") or {}).get("phase", "no status yet")


class KubernetesBackend:
    """What both kinds do the same way on Kubernetes: objects created in order and recorded
    in `resource.state` as they are (a start that fails half-way is torn down by `stop`),
    workers as one Deployment scaled by its `replicas`, and `stop` deleting by label."""

    kind = ""
    app_component = "worker"

    def __init__(self, api: KubernetesApi, *, namespace: str, image: str, timeout: float = 300.0,
                 poll: float = 2.0, uid: int = SESSION_UID, gid: int = SESSION_GID):
        """`api`: the cluster; `namespace`: where resources run (the sessions' namespace,
        where their home claims are); `image`: what their pods run; `timeout`: how long a
        start waits for its pods, and a stop for its pods to be gone."""
        self.api = api
        self.namespace = namespace
        self.image = image
        self.timeout = timeout
        self.poll = poll
        self.uid = uid
        self.gid = gid

    # -- the contract -------------------------------------------------------------------

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise BackendError(f"cannot scale to {workers!r} workers")
        state = resource.state or {}
        try:
            self._check_running(resource)
            self.api.patch("Deployment", self._namespace(resource), state["workers"], {"spec": {"replicas": workers}})
        except KubernetesApiError as exc:
            raise BackendError(f"cannot scale {self.kind} {resource.id} to {workers} workers: {exc}") from None
        state["replicas"] = workers

    def stop(self, resource: Resource) -> None:
        if not isinstance(resource.id, str) or not _RESOURCE_ID.match(resource.id):
            return  # refused before anything was made (and no label selector could name it)
        state = resource.state if resource.state is not None else {}
        namespace = self._namespace(resource)
        labelled = {RESOURCE_LABEL: resource.id}
        recorded = [tuple(item) for item in state.get("objects", [])]
        try:
            for kind in DELETE_ORDER:
                if kind == "NetworkPolicy":
                    self._wait_for_no_pods(resource, namespace)
                names = {item["metadata"]["name"] for item in self.api.list(kind, namespace, labelled)}
                names |= {name for recorded_kind, name in recorded if recorded_kind == kind}
                for name in sorted(names):
                    self.api.delete(kind, namespace, name)
        except KubernetesApiError as exc:
            raise BackendError(f"cannot stop {self.kind} {resource.id}: {exc}") from None
        state["objects"] = []
        resource.state = state

    def alive(self, resource: Resource) -> tuple[bool, int, str]:
        state = resource.state or {}
        if not state.get("workers"):
            return False, 0, f"the {self.kind} resource was never started on Kubernetes"
        namespace = self._namespace(resource)
        try:
            deployment = self.api.read("Deployment", namespace, state["workers"])
            pods = self._pods(resource, self.app_component)
            problem = self._other_problem(resource)
        except KubernetesApiError as exc:
            return True, 0, f"the Kubernetes API does not answer ({exc}); assumed still running"
        running = sum(1 for pod in pods if _pod_ready(pod) and not pod["metadata"].get("deletionTimestamp"))
        if problem:
            return False, running, problem
        if deployment is None:
            return False, running, f"the workers' Deployment {state['workers']} is gone"
        wanted = (deployment.get("spec") or {}).get("replicas", 0)
        return True, running, f"{running} of {wanted} workers running"

    def busy(self, resource: Resource) -> bool:
        return False

    # -- shared steps ---------------------------------------------------------------------

    def _namespace(self, resource: Resource) -> str:
        return (resource.state or {}).get("namespace") or self.namespace

    def _start_state(self, resource: Resource, names: dict) -> None:
        resource.state = {
            "version": STATE_VERSION,
            "namespace": self.namespace,
            "objects": [],  # [kind, name] in creation order, recorded as each is created
            "workers": names["workers"],
            "replicas": resource.workers,
        }

    def _create_all(self, resource: Resource, manifests: list[dict]) -> None:
        for manifest in manifests:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            # Recorded before the call: a create that timed out may still have happened.
            resource.state["objects"].append([kind, name])
            try:
                self.api.create(manifest)
            except KubernetesApiError as exc:
                raise BackendError(f"cannot create {kind} {name} in namespace {self.namespace}: {exc}") from None

    def _start(self, resource: Resource, manifests_of) -> None:
        """Create what `manifests_of()` renders, then `_wait_started`; anything that fails
        leaves nothing behind."""
        try:
            self._create_all(resource, manifests_of())
            self._wait_started(resource)
        except BackendError:
            self._stop_quietly(resource)
            raise
        except Exception as exc:  # anything unforeseen still leaves nothing behind
            self._stop_quietly(resource)
            raise BackendError(f"cannot start the {self.kind} resource on Kubernetes: {exc}") from exc

    def _stop_quietly(self, resource: Resource) -> None:
        try:
            self.stop(resource)
        except BackendError:
            pass  # the manager stops a failed start once more, and says so if it fails

    def _wait_started(self, resource: Resource) -> None:
        """Wait for what must run before the resource is usable (nothing by default)."""

    def _other_problem(self, resource: Resource) -> str | None:
        return None

    def _check_running(self, resource: Resource) -> None:
        if not (resource.state or {}).get("workers"):
            raise BackendError(f"the {self.kind} resource {resource.id} is not running")

    def _pods(self, resource: Resource, component: str) -> list[dict]:
        labels = {RESOURCE_LABEL: resource.id, COMPONENT_LABEL: component}
        return self.api.list("Pod", self._namespace(resource), labels)

    def _wait_for_pod(self, resource: Resource, name: str, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                pod = self.api.read("Pod", self._namespace(resource), name)
            except KubernetesApiError as exc:
                raise BackendError(f"cannot read the {what} pod {name}: {exc}") from None
            if pod is None:
                raise BackendError(f"the {what} pod {name} was deleted while starting")
            problem = _pod_problem(pod)
            if problem:
                raise BackendError(f"the {what} pod {name} cannot run: {problem}")
            if _pod_ready(pod):
                return
            if time.monotonic() > deadline:
                raise BackendError(
                    f"timed out after {self.timeout:g} s waiting for the {what} pod {name}: {_pending_reason(pod)}"
                )
            time.sleep(self.poll)

    def _wait_for_no_pods(self, resource: Resource, namespace: str) -> None:
        """Until the resource's pods are gone (they end within their grace period), so that
        its NetworkPolicy outlives them; after `timeout`, stop goes on all the same: a stop
        must always make everything disappear."""
        deadline = time.monotonic() + self.timeout
        while self.api.list("Pod", namespace, {RESOURCE_LABEL: resource.id}) and time.monotonic() < deadline:
            time.sleep(self.poll)


class KubernetesSparkBackend(KubernetesBackend):
    """The `spark` kind on Kubernetes (render_spark_cluster). `start` returns once the
    master is ready; workers register as their pods come up (alive() counts them)."""

    kind = "spark"

    def __init__(self, api: KubernetesApi, *, namespace: str, image: str, ui_prefix: str | None = None,
                 hub_pod_labels: dict | None = None, status_url: str = "http://{service}.{namespace}.svc:{port}/json/",
                 **kwargs):
        """`ui_prefix`: the hub's route to a cluster's UI with `{id}` for the resource id
        (as LocalSparkBackend's); `status_url`: where the manager reads a master's state."""
        super().__init__(api, namespace=namespace, image=image, **kwargs)
        self.ui_prefix = ui_prefix
        self.hub_pod_labels = hub_pod_labels
        self.status_url = status_url

    def start(self, resource: Resource, owner: Owner) -> None:
        names = spark_names(resource.id)
        worker_size(resource.options)
        self._start_state(resource, names)
        # The owner's driver needs it too (officina.lab's spark_session `secret`); the
        # manager's records are the hub's alone.
        resource.state.update(secret=secrets.token_hex(32), master=names["master"], service=names["service"])
        service = f"{names['service']}.{self.namespace}.svc"
        resource.endpoints = {
            "master": f"spark://{service}:{SPARK_PORT}",
            # What the hub's UI proxy forwards to, as the local backend's loopback address.
            "ui": f"http://{service}:{SPARK_UI_PORT}/",
        }
        ui_prefix = self.ui_prefix.format(id=resource.id) if self.ui_prefix else None
        self._start(resource, lambda: render_spark_cluster(
            resource, owner, namespace=self.namespace, image=self.image, secret=resource.state["secret"],
            ui_prefix=ui_prefix, uid=self.uid, gid=self.gid, hub_pod_labels=self.hub_pod_labels,
        ))

    def _wait_started(self, resource: Resource) -> None:
        self._wait_for_pod(resource, resource.state["master"], "Spark master")

    def _check_running(self, resource: Resource) -> None:
        super()._check_running(resource)
        problem = self._other_problem(resource)
        if problem:
            raise BackendError(f"the Spark cluster is not running: {problem}")

    def _other_problem(self, resource: Resource) -> str | None:
        name = (resource.state or {}).get("master")
        pod = self.api.read("Pod", self._namespace(resource), name) if name else None
        if pod is None:
            return f"the Spark master pod {name} is gone"
        problem = _pod_problem(pod)
        return f"the Spark master pod {name} stopped: {problem}" if problem else None

    def busy(self, resource: Resource) -> bool:
        """Whether the master runs applications, from its /json/ page, read from the hub's
        pod (the NetworkPolicy admits it on the UI port). A master that does not answer is
        not busy: then the idle timeout, counted from the last use through the hub, applies."""
        state = resource.state or {}
        if not state.get("service"):
            return False
        url = self.status_url.format(service=state["service"], namespace=self._namespace(resource), port=SPARK_UI_PORT,
                                     id=resource.id)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=3) as response:
                return bool(json.load(response).get("activeapps"))
        except (OSError, ValueError):
            return False


class KubernetesCondorBackend(KubernetesBackend):
    """The `condor` kind ("HTCondor workers") on Kubernetes: execute nodes joining the pool
    that render_condor_pool describes (render_condor_workers). `start` returns once the
    Deployment exists; nodes join as their pods come up.

    `busy` is always False: telling whether a node runs a job takes a query to the pool
    with a token the resource manager does not hold on Kubernetes, so the idle timeout
    (from the last create, scale or UI use) also stops workers that run jobs."""

    kind = "condor"
    app_component = "execute"

    def __init__(self, api: KubernetesApi, *, namespace: str, image: str = CONDOR_EXECUTE_IMAGE,
                 collector_service: str = COLLECTOR_SERVICE, **kwargs):
        super().__init__(api, namespace=namespace, image=image, **kwargs)
        self.collector_service = collector_service

    def start(self, resource: Resource, owner: Owner) -> None:
        names = condor_worker_names(resource.id)
        worker_size(resource.options)
        account = condor_account(owner.name)
        token_secret = execute_token_secret_name(account)
        # Checked first: without it the pods would wait forever for a volume.
        try:
            found = self.api.read("Secret", self.namespace, token_secret)
        except KubernetesApiError as exc:
            raise BackendError(f"cannot read the Secret {token_secret}: {exc}") from None
        if found is None:
            raise BackendError(
                f"{owner.name} has no HTCondor execute token yet (Secret {token_secret} in namespace "
                f"{self.namespace}): it is made with their own token when they start a session"
            )
        self._start_state(resource, names)
        resource.state["account"] = account
        resource.endpoints = {
            "pool": f"{self.collector_service}.{self.namespace}.svc:{CONDOR_PORT}",
            "requirements": f'TARGET.OfficinaResource == "{resource.id}"',
        }
        self._start(resource, lambda: render_condor_workers(
            resource, owner, namespace=self.namespace, image=self.image, collector_service=self.collector_service,
            token_secret=token_secret, uid=self.uid, gid=self.gid,
        ))


class KubernetesOneServerBackend(KubernetesBackend):
    """One server (a Deployment of one replica) behind a Service only the hub's pod reaches
    (`_hub_only_server`): `start` returns once it answers its readiness probe, and a pod that
    will not run without someone changing something is reported at once."""

    app_component = "server"
    server_title = "server"  # what messages call it

    def _wait_started(self, resource: Resource) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                pods = self._pods(resource, self.app_component)
            except KubernetesApiError as exc:
                raise BackendError(f"cannot read the {self.server_title}'s pods: {exc}") from None
            if any(_pod_ready(pod) for pod in pods):
                return
            problem = self._other_problem(resource, pods)
            if problem:
                raise BackendError(problem)
            if time.monotonic() > deadline:
                why = _pending_reason(pods[0]) if pods else "no pod was made"
                raise BackendError(f"timed out after {self.timeout:g} s waiting for the {self.server_title}: {why}")
            time.sleep(self.poll)

    def _other_problem(self, resource: Resource, pods: list[dict] | None = None) -> str | None:
        """Why the server cannot run: no ready pod, and one that will not run without someone
        changing something (an image that cannot be pulled, a server that keeps exiting)."""
        pods = self._pods(resource, self.app_component) if pods is None else pods
        if any(_pod_ready(pod) for pod in pods):
            return None
        for pod in pods:
            problem = _pod_problem(pod)
            if problem:
                return f"the {self.server_title} pod {pod['metadata']['name']} cannot run: {problem}"
        return None


class KubernetesAppBackend(KubernetesOneServerBackend):
    """The `app` kind ("Published Voila app") on Kubernetes (render_app): one Voila server
    behind a Service that only the hub's pod reaches, the manager's proxy adding Voila's token.
    The owner's app token is minted at start and revoked at stop, as on one machine."""

    kind = "app"
    server_title = "app"

    def __init__(self, api: KubernetesApi, *, namespace: str, image: str, tokens, token_lifetime: int,
                 public_prefix: str, resources_url: str, hub_pod_labels: dict | None = None, **kwargs):
        super().__init__(api, namespace=namespace, image=image, **kwargs)
        self.tokens = tokens
        self.token_lifetime = token_lifetime
        self.public_prefix = public_prefix.rstrip("/") + "/"
        self.resources_url = resources_url
        self.hub_pod_labels = hub_pod_labels

    def start(self, resource: Resource, owner: Owner) -> None:
        from .app_local import APP_TOKEN_SCOPES

        names = app_names(resource.id)
        notebook, _, _ = app_options(resource.options)
        if resource.workers != 1:
            raise BackendError("an app is one Voila server: it cannot be scaled")
        self._start_state(resource, names)
        base_url = f"{self.public_prefix}{resource.id}/"
        upstream = f"http://{names['service']}.{self.namespace}.svc:{APP_PORT}"
        resource.state.update(upstream=upstream, upstream_token=secrets.token_urlsafe(32), hub_token_id=None,
                              base_url=base_url)
        resource.endpoints = {"app": upstream + base_url, "notebook": notebook}
        token_id, hub_token = self.tokens.mint(resource.owner, APP_TOKEN_SCOPES, self.token_lifetime,
                                               f"Officina app {resource.id} ({notebook})")
        resource.state["hub_token_id"] = token_id
        self._start(resource, lambda: render_app(
            resource, owner, namespace=self.namespace, image=self.image, base_url=base_url,
            resources_url=self.resources_url, upstream_token=resource.state["upstream_token"], hub_token=hub_token,
            uid=self.uid, gid=self.gid, hub_pod_labels=self.hub_pod_labels,
        ))

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        raise BackendError("an app is one Voila server: it cannot be scaled")

    def stop(self, resource: Resource) -> None:
        super().stop(resource)
        state = resource.state or {}
        if state.get("hub_token_id"):
            self.tokens.revoke(resource.owner, state["hub_token_id"])
            state["hub_token_id"] = None

    def busy(self, resource: Resource) -> bool:
        return True  # a published app waits for its visitors (see app_local)

    def upstream_headers(self, resource: Resource) -> dict:
        return {"Authorization": f"token {resource.state['upstream_token']}"}


class KubernetesModelBackend(KubernetesOneServerBackend):
    """The `model` kind ("DEEPaaS model server") on Kubernetes (render_model_server): one
    server, a Deployment of one replica behind a Service that only the hub's pod reaches.
    `start` returns once the server answers its readiness probe.

    `busy` is always False: every call through the resource manager's proxy touches the
    record (the idle timeout counts from the last call), and the hub's pod has no business
    asking the server about trainings it did not start through the proxy."""

    kind = "model"
    server_title = "model server"

    def __init__(self, api: KubernetesApi, *, namespace: str, image: str = MODEL_SERVER_IMAGE,
                 hub_pod_labels: dict | None = None, **kwargs):
        super().__init__(api, namespace=namespace, image=image, **kwargs)
        self.hub_pod_labels = hub_pod_labels

    def start(self, resource: Resource, owner: Owner) -> None:
        names = model_names(resource.id)
        model, package, _, _ = model_server_options(resource.options)
        if resource.workers != 1:
            raise BackendError("a model server is one server: it cannot be scaled")
        self._start_state(resource, names)
        resource.state.update(model=model, package=package or None, service=names["service"])
        resource.endpoints = {"api": f"http://{names['service']}.{self.namespace}.svc:{MODEL_PORT}/", "model": model}
        self._start(resource, lambda: render_model_server(
            resource, owner, namespace=self.namespace, image=self.image, uid=self.uid, gid=self.gid,
            hub_pod_labels=self.hub_pod_labels,
        ))

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        if isinstance(workers, bool) or workers != 1:
            raise BackendError("a model server is one server: it cannot be scaled")
        super().scale(resource, owner, workers)

    def alive(self, resource: Resource) -> tuple[bool, int, str]:
        alive, running, message = super().alive(resource)
        model = (resource.state or {}).get("model")
        if alive and running:
            return True, running, f"serving {model}"
        return alive, running, message

    def busy(self, resource: Resource) -> bool:
        return False


# --- the command line ------------------------------------------------------------------

# A fixed id, so that a render is reproducible (the manager makes random ones).
SAMPLE_RESOURCE_ID = "0ff1c1a0da5c"
KINDS = ("spark", "condor", "model", "condor-pool")


def _check_username(username: str) -> str:
    """JupyterHub's own rule for a user name (Authenticator.validate_username)."""
    from jupyterhub.auth import Authenticator

    if not Authenticator().validate_username(username):
        raise ValueError(f"not a JupyterHub user name: {username!r} (empty, '.', '..', a '/' or spaces around it)")
    return username


def render_for_settings(settings, kind: str, users: list[str], *, workers: int | None = None,
                        namespace: str | None = None, image: str | None = None, model: str | None = None,
                        package: str | None = None) -> list[dict]:
    """What `kind` becomes for `users` on the platform `settings` describes (the CLI's work);
    `model` and `package` are a model server's options (default: the catalogue's first model)."""
    from .kinds import KindSpec, OptionError

    for username in users:
        _check_username(username)
    if kind != "model" and (model is not None or package is not None):
        raise ValueError("--model and --package are for a model server (--kind model)")
    namespace = namespace or session_namespace()
    if kind == "condor-pool":
        if workers is not None:
            raise ValueError("--workers is for a resource (spark, condor, model), not for the pool")
        return render_condor_pool(namespace=namespace, users=users, **({"image": image} if image else {}))
    if len(users) != 1:
        raise ValueError(f"a {kind} resource has one owner; got {len(users)} users")
    declared = settings["resources"].get(kind)
    if declared is None:
        raise ValueError(f"resources.{kind} is not declared in {settings.source}")
    request = {} if workers is None else {"workers": workers}
    if kind == "model":
        spec = KindSpec.for_models(declared)
        request.update({key: value for key, value in (("model", model), ("package", package)) if value is not None})
    else:
        spec = KindSpec.from_settings(kind, kind, declared["options"])
    try:
        options, count = spec.validate(request)
    except OptionError as error:
        raise ValueError(str(error)) from None
    username = users[0]
    resource = Resource(id=SAMPLE_RESOURCE_ID, kind=kind, owner=username, options=options, workers=count)
    owner = Owner(name=username, groups=(), account=None, home=HOME_MOUNT_PATH, token_file=TOKEN_FILE)
    if kind == "spark":
        prefix = f"{settings['hub']['base_url']}services/resources/ui/{resource.id}"
        image = image or default_cluster_image(settings["profiles"])
        return render_spark_cluster(resource, owner, namespace=namespace, image=image, secret=secrets.token_hex(32),
                                    ui_prefix=prefix)
    if kind == "model":
        return render_model_server(resource, owner, namespace=namespace, **({"image": image} if image else {}))
    return render_condor_workers(resource, owner, namespace=namespace, **({"image": image} if image else {}))


def main(argv: list[str] | None = None) -> int:
    from ..settings import SettingsError, load_settings

    parser = argparse.ArgumentParser(
        prog="python -m officina.hub.resources.kubernetes",
        description="Print the Kubernetes objects a user's resource (spark, condor, model) or the HTCondor pool "
        "(condor-pool, one schedd per --user) becomes, as multi-document YAML (offline; nothing is created). "
        "A Spark cluster's Secret holds a fresh throwaway secret.",
    )
    parser.add_argument("--config", help="officina.yaml (default: the embedded defaults)")
    parser.add_argument("--user", action="append", required=True, help="hub username (repeat for condor-pool)")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--workers", type=int, help="workers (default: the kind's declared default)")
    parser.add_argument("--namespace", help="default: the sessions' namespace")
    parser.add_argument("--image", help="default: the catalogue's default CPU image (spark), HTCondor's (condor), "
                        f"{MODEL_SERVER_IMAGE} (model)")
    parser.add_argument("--model", help="model: the catalogue's model to serve (default: its first)")
    parser.add_argument("--package", help="model: the owner's own package, a folder in their home (e.g. models/my_model)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        manifests = render_for_settings(settings, args.kind, args.user, workers=args.workers,
                                        namespace=args.namespace, image=args.image, model=args.model,
                                        package=args.package)
    except (SettingsError, BackendError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    yaml.safe_dump_all(manifests, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
