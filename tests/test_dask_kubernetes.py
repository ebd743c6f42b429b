"""dask-gateway on Kubernetes: its configuration from the platform settings, and the objects
its controller would create for a cluster, checked offline.

No Kubernetes API server exists here. The gateway's configuration is the one
`configure_kubernetes` builds (after the local `configure`, as the gateway runs it), read
back through dask-gateway-server's own classes. The pods are the ones dask-gateway's
controller builds: `render_cluster_manifests` runs its create path against a stand-in that
only keeps what it is sent; they are validated against the Kubernetes JSON schemas of
kubernetes-validate, as tests/test_kubernetes.py validates session pods.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from dask_gateway_server.app import DaskGateway
from dask_gateway_server.auth import JupyterHubAuthenticator
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.kubernetes.controller import KubeController
from dask_gateway_server.options import Float, Integer, Options
from test_kubernetes import AWKWARD_USER, KUBERNETES_VERSION, USER_SLUGS
from traitlets.config import Config

from officina.hub.dask_gateway import configure
from officina.hub.dask_gateway_kubernetes import (
    OfficinaKubeBackend,
    configure_kubernetes,
    render_cluster_manifests,
)
from officina.hub.kubernetes import offline_spawner, run_coroutine
from officina.hub.settings import SettingsError, load_settings
from officina.hub.state import StateDir

GIB = 1024**3
NAMESPACE = "officina-users"
TOKEN_FILE = "/home/jovyan/.officina/bearer_token"
CREDENTIALS = "/etc/dask-credentials/"
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {"privileged": False, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

# A platform under an awkward prefix, whose default profile is a GPU one: clusters take the
# first CPU profile's image.
CUSTOM = """
hub: {base_url: "/@/space%20word/"}
sessions: {spawner: kubernetes}
dask: {idle_timeout: 600}
profiles:
  - slug: gpu
    display_name: GPU
    default: true
    image: registry.example.org/officina/notebook-gpu:0.2.0
    gpus: {count: 1}
  - slug: cpu
    display_name: CPU
    image: registry.example.org/officina/notebook-cpu:0.2.0
  - slug: cpu-other
    display_name: Other CPU
    image: registry.example.org/officina/other:1.0
"""

# variant -> (officina.yaml beyond state_dir, expected values)
VARIANTS = {
    "default": (
        "sessions: {spawner: kubernetes}\n",
        {"image": "officina/notebook-cpu:0.1.0", "idle_timeout": 1800, "hub_api": "http://hub:8081/hub/api"},
    ),
    "custom": (
        CUSTOM,
        {
            "image": "registry.example.org/officina/notebook-cpu:0.2.0",
            "idle_timeout": 600,
            "hub_api": "http://hub:8081/@/space%20word/hub/api",
        },
    ),
}


@pytest.fixture(scope="module")
def platforms(tmp_path_factory):
    settings = {}
    for name, (text, _) in VARIANTS.items():
        folder = tmp_path_factory.mktemp(f"dask-kubernetes-{name}")
        config = folder / "officina.yaml"
        config.write_text(f"state_dir: {folder / 'state'}\n{text}")
        settings[name] = load_settings(config)
        StateDir(settings[name].state_dir).prepare(shared_homes=False)
    return settings


def gateway_config(settings, local_first: bool = True, **kwargs) -> Config:
    """The configuration dask-gateway-server loads on Kubernetes: the local one, then the
    Kubernetes one over it (or, with local_first=False, the Kubernetes one alone)."""
    c = Config()
    if local_first:
        configure(c, settings.raw)
    configure_kubernetes(c, settings, StateDir(settings.state_dir), **kwargs)
    return c


def validate(manifest: dict, strict: bool = True) -> None:
    assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=strict) == KUBERNETES_VERSION


def only_container(pod: dict, name: str) -> dict:
    containers = pod["spec"]["containers"]
    assert [c["name"] for c in containers] == [name]
    return containers[0]


def by_name(items: list[dict]) -> dict:
    named = {item["name"]: item for item in items}
    assert len(named) == len(items), f"duplicate names in {items}"
    return named


@pytest.mark.parametrize("local_first", [True, False], ids=["after-local", "alone"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gateway_configuration_comes_from_the_settings(platforms, variant, local_first, monkeypatch):
    expected = VARIANTS[variant][1]
    c = gateway_config(platforms[variant], local_first, namespace=NAMESPACE)
    # The gateway's hub token comes from a Secret, through the environment.
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "token-from-a-secret")

    gateway = DaskGateway(config=c)
    assert gateway.backend_class is OfficinaKubeBackend
    assert gateway.address == ":8000"
    auth = gateway.authenticator_class(parent=gateway)
    assert isinstance(auth, JupyterHubAuthenticator)
    assert auth.jupyterhub_api_url == expected["hub_api"]
    assert auth.jupyterhub_service_name == "dask-gateway"
    assert auth.jupyterhub_api_token == "token-from-a-secret"

    backend = gateway.backend_class(parent=gateway)
    controller = KubeController(config=c)
    for component in (backend, controller):
        assert component.gateway_instance == "officina"
        assert component.api_url == f"http://dask-gateway-api.{NAMESPACE}:8000/api"

    cluster = backend.cluster_config_class(parent=backend)
    assert cluster.namespace == NAMESPACE
    assert cluster.image == expected["image"]
    assert cluster.idle_timeout == expected["idle_timeout"]
    # Nothing of the local configuration (the platform venv's commands, its PATH) is left.
    assert cluster.scheduler_cmd == ["dask", "scheduler"]
    assert cluster.worker_cmd == ["dask", "worker"]
    assert cluster.environment == {}
    for role in ("scheduler", "worker"):
        assert getattr(cluster, f"{role}_cores") == getattr(cluster, f"{role}_cores_limit") == 1
        assert getattr(cluster, f"{role}_memory") == getattr(cluster, f"{role}_memory_limit") == GIB


def test_configuring_twice_changes_nothing(platforms):
    once = gateway_config(platforms["custom"], namespace=NAMESPACE)
    twice = gateway_config(platforms["custom"], namespace=NAMESPACE)
    configure_kubernetes(twice, platforms["custom"], None, namespace=NAMESPACE)
    for section in ("DaskGateway", "KubeBackend", "KubeController", "KubeClusterConfig", "JupyterHubAuthenticator"):
        assert twice[section] == once[section]


@pytest.mark.parametrize("username", [*USER_SLUGS, "Zoë.Ünicode", "a-very-long-name-" * 5])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_gateway_and_kubespawner_agree(platforms, variant, username):
    """Workers mount the claim KubeSpawner made for the user, in the sessions' namespace, and
    the gateway asks the hub at the address sessions use."""
    settings = platforms[variant]

    async def hub_side():
        spawner = offline_spawner(settings, username, ["officina"])
        return spawner.pvc_name, spawner.namespace, spawner.hub.api_url

    claim, namespace, hub_api = run_coroutine(hub_side())
    c = gateway_config(settings)
    assert c.KubeClusterConfig.namespace == namespace
    assert c.JupyterHubAuthenticator.jupyterhub_api_url == hub_api

    worker = render_cluster_manifests(settings, username, ["officina"], config=c)["worker"]
    volumes = by_name(worker["spec"]["volumes"])
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == claim
    assert worker["metadata"]["namespace"] == namespace


def test_workers_read_the_token_file_sessions_keep(platforms):
    from officina.hub.hub_config import configure as configure_hub

    settings = platforms["default"]
    hub = Config()
    configure_hub(hub, settings.raw)
    session_token_file = hub.OfficinaKubeSpawner.environment["BEARER_TOKEN_FILE"]
    worker = render_cluster_manifests(settings, "alice", ["officina"], config=gateway_config(settings))["worker"]
    env = by_name(only_container(worker, "dask-worker")["env"])
    assert env["BEARER_TOKEN_FILE"]["value"] == session_token_file == TOKEN_FILE


@pytest.mark.parametrize("username", list(USER_SLUGS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_scheduler_and_worker_pods(platforms, variant, username):
    expected = VARIANTS[variant][1]
    settings = platforms[variant]
    rendered = render_cluster_manifests(settings, username, ["officina"], config=gateway_config(settings, namespace=NAMESPACE))
    cluster = rendered["cluster"]
    name = cluster["metadata"]["name"]
    assert cluster["kind"] == "DaskCluster"
    assert cluster["spec"]["username"] == username

    for role in ("scheduler", "worker", "secret"):
        validate(rendered[role])
    # Upstream's Service names its ports' target `target_port` (the Python client's spelling)
    # in a plain dict, which the API server drops; for a headless Service (clusterIP: None)
    # Kubernetes ignores targetPort anyway. So: valid apart from unknown fields.
    validate(rendered["service"], strict=False)
    assert rendered["service"]["spec"]["clusterIP"] == "None"
    for manifest in rendered.values():
        assert manifest["metadata"]["namespace"] == NAMESPACE
        assert manifest["metadata"]["labels"]["gateway.dask.org/instance"] == "officina"

    resources = {"requests": {"cpu": "1.000", "memory": str(GIB)}, "limits": {"cpu": "1.000", "memory": str(GIB)}}
    secret_volume = {"name": "dask-credentials", "secret": {"secretName": rendered["secret"]["metadata"]["name"]}}
    secret_mount = {"name": "dask-credentials", "mountPath": CREDENTIALS, "readOnly": True}

    scheduler_pod = rendered["scheduler"]
    scheduler = only_container(scheduler_pod, "dask-scheduler")
    assert scheduler_pod["metadata"]["name"] == f"dask-scheduler-{name}"
    assert scheduler["image"] == expected["image"]
    assert scheduler["resources"] == resources
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    timeout_at = scheduler["args"].index("--dg-idle-timeout")
    assert float(scheduler["args"][timeout_at + 1]) == expected["idle_timeout"]
    # The scheduler gets no home and no token file.
    assert scheduler_pod["spec"]["volumes"] == [secret_volume]
    assert scheduler["volumeMounts"] == [secret_mount]
    assert "BEARER_TOKEN_FILE" not in by_name(scheduler["env"])

    worker_pod = rendered["worker"]
    worker = only_container(worker_pod, "dask-worker")
    assert worker_pod["metadata"]["generateName"] == f"dask-worker-{name}-"
    assert worker_pod["metadata"]["ownerReferences"][0]["name"] == scheduler_pod["metadata"]["name"]
    assert worker["image"] == expected["image"]
    assert worker["resources"] == resources
    assert worker["args"][:3] == ["dask", "worker", f"tls://dask-{name}.{NAMESPACE}:8786"]
    assert by_name(worker_pod["spec"]["volumes"]) == {
        "dask-credentials": secret_volume,
        "home": {
            "name": "home",
            "persistentVolumeClaim": {"claimName": f"home-{USER_SLUGS[username]}", "readOnly": True},
        },
    }
    assert by_name(worker["volumeMounts"]) == {
        "dask-credentials": secret_mount,
        "home": {"name": "home", "mountPath": "/home/jovyan", "readOnly": True},
    }
    env = by_name(worker["env"])
    assert env["BEARER_TOKEN_FILE"] == {"name": "BEARER_TOKEN_FILE", "value": TOKEN_FILE}
    # Sessions find the gateway with DASK_GATEWAY__*; workers need none of it.
    assert not [n for n in env if n.startswith("DASK_GATEWAY__")]

    for pod in (scheduler_pod, worker_pod):
        spec = pod["spec"]
        container = spec["containers"][0]
        assert spec["securityContext"] == POD_SECURITY
        assert container["securityContext"] == CONTAINER_SECURITY
        assert spec["automountServiceAccountToken"] is False
        assert not any("hostPath" in volume for volume in spec["volumes"])


def test_no_secret_travels_in_clear(platforms):
    """The cluster's API token and TLS key reach the pods as files from the controller's
    Secret (upstream's design); the gateway's own hub token is in no pod and no
    configuration; nothing secret is in the DaskCluster object either."""
    settings = platforms["default"]
    rendered = render_cluster_manifests(settings, "alice", ["officina"], config=gateway_config(settings, namespace=NAMESPACE))
    data = {key: base64.b64decode(value).decode() for key, value in rendered["secret"]["data"].items()}
    assert set(data) == {"api-token", "dask.crt", "dask.pem"}
    assert len(data["api-token"]) >= 32
    assert data["dask.pem"].startswith("-----BEGIN PRIVATE KEY-----")
    hub_token = StateDir(settings.state_dir).secret("dask_gateway_api_token")
    secrets = [data["api-token"], data["dask.pem"], hub_token]
    key_body = "".join(data["dask.pem"].splitlines()[1:-1])
    secrets += [key_body, rendered["secret"]["data"]["api-token"], rendered["secret"]["data"]["dask.pem"]]

    for role in ("cluster", "scheduler", "service", "worker"):
        text = json.dumps(rendered[role])
        assert not [s for s in secrets if s in text], f"a secret is in the {role} object"
    assert hub_token not in repr(gateway_config(settings, namespace=NAMESPACE))

    secret_name = rendered["secret"]["metadata"]["name"]
    for role, container_name in (("scheduler", "dask-scheduler"), ("worker", "dask-worker")):
        pod = rendered[role]
        container = only_container(pod, container_name)
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["DASK_GATEWAY_API_TOKEN"] == CREDENTIALS + "api-token"
        for name in ("SCHEDULER", "WORKER"):
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{name}__KEY"] == CREDENTIALS + "dask.pem"
        mount = by_name(container["volumeMounts"])["dask-credentials"]
        assert mount["mountPath"] == CREDENTIALS and mount["readOnly"] is True
        assert by_name(pod["spec"]["volumes"])["dask-credentials"]["secret"] == {"secretName": secret_name}


def test_cluster_options_cannot_undo_the_platform_policy(platforms):
    """Options choose resources and add to the pods; the home, the token file and the
    non-root security context stay, whatever the handler returns."""

    def handler(options, user):
        return {
            "worker_cores": options.worker_cores,
            "worker_memory": f"{options.worker_memory} G",
            "environment": {"BEARER_TOKEN_FILE": "/tmp/elsewhere", "OFFICINA_GROUPS": ",".join(sorted(user.groups))},
            "worker_extra_pod_config": {
                "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
                "tolerations": [{"key": "dask", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "worker_extra_container_config": {"securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}},
        }

    options = Options(
        Integer("worker_cores", 1, min=1, max=4), Float("worker_memory", 1, min=1, max=8), handler=handler
    )
    settings = platforms["default"]
    config = gateway_config(settings, namespace=NAMESPACE, cluster_options=options)
    rendered = render_cluster_manifests(
        settings, "alice", ["officina", "officina/gpu"], {"worker_cores": 3, "worker_memory": 2.5}, config=config
    )
    worker_pod = rendered["worker"]
    validate(worker_pod)
    worker = only_container(worker_pod, "dask-worker")
    assert worker["resources"] == {
        "requests": {"cpu": "3.000", "memory": str(int(2.5 * GIB))},
        "limits": {"cpu": "3.000", "memory": str(int(2.5 * GIB))},
    }
    env = by_name(worker["env"])
    assert env["BEARER_TOKEN_FILE"]["value"] == TOKEN_FILE
    assert env["OFFICINA_GROUPS"]["value"] == "officina,officina/gpu"
    assert worker_pod["spec"]["tolerations"] == [{"key": "dask", "operator": "Exists", "effect": "NoSchedule"}]
    assert worker_pod["spec"]["securityContext"] == POD_SECURITY
    assert worker["securityContext"] == CONTAINER_SECURITY
    assert by_name(worker["volumeMounts"])["home"]["readOnly"] is True
    assert rendered["cluster"]["spec"]["options"] == {"worker_cores": 3, "worker_memory": 2.5}

    # Outside the declared range: refused before anything is created.
    with pytest.raises(PublicException, match="worker_cores"):
        render_cluster_manifests(settings, "alice", [], {"worker_cores": 5}, config=config)


def test_a_catalogue_without_a_cpu_profile_is_refused(tmp_path):
    config = tmp_path / "officina.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "profiles:\n"
        "  - {slug: gpu, display_name: GPU, gpus: {count: 1}}\n"
    )
    with pytest.raises(SettingsError, match=r"^profiles: Dask clusters on Kubernetes need at least one CPU profile"):
        configure_kubernetes(Config(), load_settings(config))


def test_command_line_prints_the_cluster_objects(platforms, tmp_path):
    config = tmp_path / "officina.yaml"
    config.write_text(f"state_dir: {platforms['custom'].state_dir}\n{CUSTOM}")
    command = [sys.executable, "-m", "officina.hub.kubernetes", "--config", str(config), "--user", AWKWARD_USER, "--dask"]

    printed = subprocess.run(command + ["--groups", "officina"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    documents = list(yaml.safe_load_all(printed.stdout))
    expected = list(render_cluster_manifests(platforms["custom"], AWKWARD_USER, ["officina"]).values())
    assert [d["kind"] for d in documents] == ["DaskCluster", "Secret", "Pod", "Service", "Pod"]
    # Each run makes a fresh key pair and token; everything else is the same.
    for document in (documents[1], expected[1]):
        document["data"] = sorted(document["data"])
    assert documents == expected

    refused = subprocess.run(command + ["--profile", "cpu"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "--profile chooses a session" in refused.stderr
