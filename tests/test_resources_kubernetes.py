"""The resource manager's Kubernetes backend, checked offline.

No Kubernetes API server exists here. Every object is rendered by the module's pure functions
and validated against the Kubernetes JSON schemas of kubernetes-validate (strict), as the
session pods of tests/test_kubernetes.py and the Dask clusters of tests/test_dask_kubernetes.py
are. The backends run against `InMemoryApiServer`, the one stand-in of this file: it keeps
objects as an API server stores them (refusing invalid ones), and on `settle()` does what the
Deployment controller and the kubelet would (pods for each Deployment's replicas, with the
status a kubelet reports). What the NetworkPolicies admit is worked out from the session pods
KubeSpawner itself renders; HTCondor expressions are evaluated with HTCondor's own ClassAd
library, and the configuration is parsed by HTCondor's own tools where the pool's root is.
"""

from __future__ import annotations

import base64
import copy
import inspect
import itertools
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import classad2
import kubernetes_validate
import pytest
import yaml
from test_kubernetes import AWKWARD_USER, KUBERNETES_VERSION, USER_SLUGS

from officina.hub.accounts import system_account_name
from officina.hub.dask_gateway_kubernetes import TOKEN_FILE, default_cluster_image
from officina.hub.kubernetes import offline_spawner, render_pod_manifest, run_coroutine
from officina.hub.resources import kubernetes as rk
from officina.hub.resources.contract import BackendError, Owner, Resource
from officina.hub.settings import load_settings

NAMESPACE = "officina-users"
IMAGE = "registry.example.org/officina/notebook-cpu:0.2.0"
UI_PREFIX = "/@/space%20word/services/resources/ui/{id}"
GIB_MIB = 1024
CONDOR_ROOT = Path("/var/cache/officina/condor-root")
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")


# --- helpers -----------------------------------------------------------------------------


def owner(name: str = "alice") -> Owner:
    return Owner(name=name, groups=("officina",), account=None, home="/home/jovyan", token_file=TOKEN_FILE)


def resource(kind: str = "spark", workers: int = 2, cores: int = 2, memory: float = 1.5, rid: str = "abc123def456",
             name: str = "alice") -> Resource:
    return Resource(id=rid, kind=kind, owner=name, options={"worker_cores": cores, "worker_memory": memory}, workers=workers)


def validate(manifest: dict) -> None:
    assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def of_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict], kind: str, component: str | None = None) -> dict:
    found = [m for m in of_kind(manifests, kind)
             if component is None or m["metadata"]["labels"][rk.COMPONENT_LABEL] == component]
    assert len(found) == 1, [m["metadata"]["name"] for m in found]
    return found[0]


def pod_specs(manifest: dict) -> list[dict]:
    if manifest["kind"] == "Pod":
        return [manifest["spec"]]
    if manifest["kind"] == "Deployment":
        return [manifest["spec"]["template"]["spec"]]
    return []


def env_of(container: dict) -> dict:
    return {item["name"]: item for item in container.get("env", [])}


def spark_cluster(user: str = "alice", workers: int = 2, secret: str | None = None, **kwargs) -> tuple[list[dict], str]:
    secret = secret or "5ec2e7" * 8
    manifests = rk.render_spark_cluster(
        resource(workers=workers, name=user), owner(user), namespace=NAMESPACE, image=IMAGE, secret=secret,
        ui_prefix=UI_PREFIX.format(id="abc123def456"), **kwargs,
    )
    return manifests, secret


def condor_workers(user: str = "alice", workers: int = 3) -> list[dict]:
    return rk.render_condor_workers(resource("condor", workers=workers, cores=4, memory=2, name=user), owner(user),
                                    namespace=NAMESPACE)


def condor_pool(users=("alice", "bob")) -> list[dict]:
    return rk.render_condor_pool(namespace=NAMESPACE, users=list(users))


def model_resource(package: str = "", model: str = "officina_digits", cores: int = 2, memory: float = 3,
                   rid: str = "abc123def456", name: str = "alice", **extra) -> Resource:
    options = {"model": model, "package": package, "share_with": ["officina"], "worker_cores": cores,
               "worker_memory": memory, **extra}
    return Resource(id=rid, kind="model", owner=name, options=options, workers=1)


def model_server(user: str = "alice", package: str = "", **kwargs) -> list[dict]:
    return rk.render_model_server(model_resource(package, name=user, **kwargs), owner(user), namespace=NAMESPACE)


def condor_config(text: str) -> dict[str, str]:
    """`NAME = value` lines of an HTCondor configuration (multi-line @= values skipped)."""
    values, in_block = {}, None
    for line in text.splitlines():
        if in_block:
            in_block = None if line.strip() == in_block else in_block
            continue
        if "@=" in line:
            in_block = "@" + line.split("@=", 1)[1].strip()
            continue
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def all_manifests() -> list[tuple[str, dict]]:
    spark, _ = spark_cluster()
    return ([("spark", m) for m in spark] + [("condor", m) for m in condor_workers()]
            + [("condor-pool", m) for m in condor_pool()] + [("model", m) for m in model_server()]
            + [("model-package", m) for m in model_server(package="models/my_model")])


# --- what NetworkPolicies admit (ingress, one namespace) ---------------------------------


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"this check reads matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policies: list[dict], target: dict, source: dict, port: int) -> bool:
    """Whether a pod labelled `source` may open `port` on a pod labelled `target`, in the
    same namespace, under `policies` (Kubernetes' rules: a pod no policy selects is open;
    otherwise some rule of a selecting policy must admit both the peer and the port)."""
    selecting = [p for p in policies if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            assert peers is None or all(set(peer) == {"podSelector"} for peer in peers), "same-namespace peers only"
            peer_ok = peers is None or any(selects(peer["podSelector"], source) for peer in peers)
            port_ok = "ports" not in rule or any(p["port"] == port for p in rule["ports"])
            if peer_ok and port_ok:
                return True
    return False


# --- the stand-in for the API server -----------------------------------------------------


def running_status(pod: dict) -> dict:
    return {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": c["name"], "ready": True, "state": {"running": {}}} for c in pod["spec"]["containers"]],
    }


def image_pull_failure(pod: dict) -> dict:
    return {
        "phase": "Pending",
        "containerStatuses": [
            {"name": c["name"], "ready": False,
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{c["image"]}"'}}}
            for c in pod["spec"]["containers"]
        ],
    }


def unschedulable(pod: dict) -> dict:
    return {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient cpu."},
    ]}


def merge(into: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif value is None:
            into.pop(key, None)
        else:
            into[key] = copy.deepcopy(value)


class InMemoryApiServer:
    """Stands in for the Kubernetes API server: objects by (kind, namespace, name) as stored
    (uid, resourceVersion), invalid objects refused as an API server's validation would, and,
    on `settle()`, the Deployment controller's and the kubelet's work: each Deployment gets
    pods for its replicas (the newest go first when it shrinks), each pod `pod_status`."""

    def __init__(self, pod_status=running_status, auto_settle: bool = False):
        """`auto_settle`: the controllers work at once (each list of pods settles first),
        for a backend that waits for a Deployment's pod."""
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.pod_status = pod_status
        self.auto_settle = auto_settle
        self.refuse: dict[str, str] = {}  # kind -> why the server refuses to create one
        self.requests: list[tuple[str, str, str]] = []
        self._serial = itertools.count(1)

    def _key(self, kind: str, namespace: str, name: str) -> tuple[str, str, str]:
        assert kind in rk.API_VERSIONS, kind
        return kind, namespace, name

    def create(self, manifest: dict) -> dict:
        kind, meta = manifest["kind"], manifest["metadata"]
        self.requests.append(("create", kind, meta["name"]))
        validate(manifest)
        if kind in self.refuse:
            raise rk.KubernetesApiError(403, f"{kind} {meta['name']} is forbidden: {self.refuse[kind]}")
        key = self._key(kind, meta["namespace"], meta["name"])
        if key in self.objects:
            raise rk.KubernetesApiError(409, f'{kind} "{meta["name"]}" already exists')
        stored = copy.deepcopy(manifest)
        serial = next(self._serial)
        stored["metadata"].update(uid=f"uid-{serial}", resourceVersion=str(serial))
        if kind == "Pod":
            stored["status"] = self.pod_status(stored)
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def read(self, kind: str, namespace: str, name: str) -> dict | None:
        self.requests.append(("read", kind, name))
        found = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        self.requests.append(("patch", kind, name))
        key = self._key(kind, namespace, name)
        if key not in self.objects:
            raise rk.KubernetesApiError(404, f'{kind} "{name}" not found')
        patched = copy.deepcopy(self.objects[key])
        merge(patched, patch)
        validate({k: v for k, v in patched.items() if k != "status"})
        self.objects[key] = patched
        return copy.deepcopy(patched)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.requests.append(("delete", kind, name))
        return self.objects.pop(self._key(kind, namespace, name), None) is not None

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict]:
        if kind == "Pod" and self.auto_settle:
            self.settle()
        self.requests.append(("list", kind, ",".join(f"{k}={v}" for k, v in sorted(labels.items()))))
        return [copy.deepcopy(obj) for (k, ns, _), obj in self.objects.items()
                if k == kind and ns == namespace and selects({"matchLabels": labels}, obj["metadata"].get("labels", {}))]

    def settle(self) -> None:
        for (kind, namespace, name), deployment in list(self.objects.items()):
            if kind != "Deployment":
                continue
            selector = deployment["spec"]["selector"]["matchLabels"]
            pods = sorted((obj for (k, ns, _), obj in self.objects.items()
                           if k == "Pod" and ns == namespace and selects({"matchLabels": selector}, obj["metadata"]["labels"])),
                          key=lambda pod: int(pod["metadata"]["resourceVersion"]))
            for pod in pods[deployment["spec"]["replicas"]:]:
                del self.objects[("Pod", namespace, pod["metadata"]["name"])]
            for _ in range(deployment["spec"]["replicas"] - len(pods)):
                template = deployment["spec"]["template"]
                pod = {"apiVersion": "v1", "kind": "Pod", "spec": copy.deepcopy(template["spec"]),
                       "metadata": {"name": f"{name}-{next(self._serial)}", "namespace": namespace,
                                    "labels": dict(template["metadata"]["labels"])}}
                self.create(pod)

    def names(self, kind: str | None = None) -> set[str]:
        return {name for (k, _, name) in self.objects if kind is None or k == kind}


def test_the_stand_in_behaves_like_an_api_server():
    api = InMemoryApiServer()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NAMESPACE, "labels": {"a": "1"}},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}
    created = api.create(pod)
    assert created["status"]["phase"] == "Running" and created["metadata"]["uid"]
    with pytest.raises(rk.KubernetesApiError) as conflict:
        api.create(pod)
    assert conflict.value.status == 409
    with pytest.raises(kubernetes_validate.ValidationError):
        api.create({**pod, "metadata": {**pod["metadata"], "name": "q"}, "spec": {"containerz": []}})
    assert [p["metadata"]["name"] for p in api.list("Pod", NAMESPACE, {"a": "1"})] == ["p"]
    assert api.list("Pod", NAMESPACE, {"a": "2"}) == [] and api.list("Pod", "elsewhere", {"a": "1"}) == []
    with pytest.raises(rk.KubernetesApiError) as missing:
        api.patch("Deployment", NAMESPACE, "none", {"spec": {"replicas": 1}})
    assert missing.value.status == 404
    assert api.delete("Pod", NAMESPACE, "p") is True and api.delete("Pod", NAMESPACE, "p") is False


# --- rendering: every object -------------------------------------------------------------


SOURCES = ["spark", "condor", "condor-pool", "model", "model-package"]


@pytest.mark.parametrize("source", SOURCES)
def test_every_manifest_is_valid_kubernetes(source):
    manifests = [m for s, m in all_manifests() if s == source]
    assert manifests
    for manifest in manifests:
        validate(manifest)
        assert manifest["metadata"]["namespace"] == NAMESPACE
    names = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert len(set(names)) == len(names), names


@pytest.mark.parametrize("source", SOURCES)
def test_every_container_runs_as_the_session_user_never_root(source):
    pods = [spec for s, m in all_manifests() if s == source for spec in pod_specs(m)]
    assert pods
    for spec in pods:
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        assert not [v for v in spec["volumes"] if "hostPath" in v], "no host paths"
        for container in spec.get("initContainers", []) + spec["containers"]:
            effective = {**spec["securityContext"], **container["securityContext"]}
            assert effective["runAsNonRoot"] is True
            assert effective["runAsUser"] == 1000 and effective["runAsGroup"] == 100
            assert effective["allowPrivilegeEscalation"] is False
            assert effective["privileged"] is False
            assert effective["capabilities"] == {"drop": ["ALL"]}
            assert effective["seccompProfile"] == {"type": "RuntimeDefault"}
            # Requests = limits for memory: a pod is never killed for what it asked for.
            assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("username", list(USER_SLUGS))
def test_every_object_names_its_resource_kind_and_owner(platform, username):
    """The owner label is the one KubeSpawner gives the owner's session pods."""
    session_label = render_pod_manifest(platform, username, ["officina"], None)["metadata"]["labels"]["hub.jupyter.org/username"]
    spark, _ = spark_cluster(username)
    workers = condor_workers(username)
    for kind, manifests in (("spark", spark), ("condor", workers), ("model", model_server(username, "models/my_model"))):
        for manifest in manifests:
            labels = manifest["metadata"]["labels"]
            assert labels[rk.RESOURCE_LABEL] == "abc123def456"
            assert labels[rk.KIND_LABEL] == kind
            assert labels[rk.OWNER_LABEL] == session_label
            assert labels["app.kubernetes.io/part-of"] == "officina"
            assert manifest["metadata"]["annotations"][rk.OWNER_ANNOTATION] == username
            if manifest["kind"] == "Deployment":
                selector = manifest["spec"]["selector"]["matchLabels"]
                template_labels = manifest["spec"]["template"]["metadata"]["labels"]
                assert selects({"matchLabels": selector}, template_labels)
                assert template_labels[rk.RESOURCE_LABEL] == "abc123def456"
                assert template_labels[rk.OWNER_LABEL] == session_label


def test_no_secret_in_clear_anywhere():
    """A Spark cluster's secret exists in its Secret's data only (base64): not in any pod's
    environment or arguments, any annotation or ConfigMap, nor anywhere in the YAML as
    text. HTCondor's key and tokens are never rendered at all: only referred to."""
    spark, secret = spark_cluster()
    text = yaml.safe_dump_all(spark) + json.dumps(spark)
    assert secret not in text
    secrets = of_kind(spark, "Secret")
    assert [s["metadata"]["name"] for s in secrets] == ["spark-abc123def456-conf"]
    assert "stringData" not in secrets[0]
    conf = base64.b64decode(secrets[0]["data"]["spark-defaults.conf"]).decode()
    properties = dict(line.split(" ", 1) for line in conf.splitlines())
    assert properties["spark.authenticate"] == "true"
    assert properties["spark.authenticate.secret"] == secret
    assert properties["spark.master.rest.enabled"] == "false"
    assert properties["spark.ui.killEnabled"] == "false"
    assert properties["spark.ui.reverseProxy"] == "true"
    assert properties["spark.ui.reverseProxyUrl"] == "/@/space%20word/services/resources/ui/abc123def456"

    for manifest in spark:
        for spec in pod_specs(manifest):
            for container in spec["containers"]:
                assert not [e for e in container.get("env", []) if "secretKeyRef" in json.dumps(e)]
                assert "envFrom" not in container
                mount = {m["name"]: m for m in container["volumeMounts"]}["spark-conf"]
                assert mount == {"name": "spark-conf", "mountPath": "/etc/spark/conf", "readOnly": True}
                assert env_of(container)["SPARK_CONF_DIR"]["value"] == "/etc/spark/conf"
            volume = {v["name"]: v for v in spec["volumes"]}["spark-conf"]
            assert volume["secret"] == {"secretName": "spark-abc123def456-conf", "defaultMode": 0o400}
            # The kubelet makes the 0400 files readable by fsGroup, the daemons' group.
            assert spec["securityContext"]["fsGroup"] == 100

    everything = [m for _, m in all_manifests()]
    for manifest in everything:
        if manifest["kind"] != "Secret":
            text = json.dumps(manifest)
            assert not JWT.search(text), f"a token in {manifest['kind']} {manifest['metadata']['name']}"
            assert "spark.authenticate.secret" not in text
    assert [m["metadata"]["name"] for m in everything if m["kind"] == "Secret"] == ["spark-abc123def456-conf"]


# --- Spark ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workers,cores,memory", [(0, 1, 1), (2, 2, 1.5), (5, 4, 8)])
def test_spark_workers_get_what_the_options_ask(workers, cores, memory):
    manifests = rk.render_spark_cluster(resource(workers=workers, cores=cores, memory=memory), owner(),
                                        namespace=NAMESPACE, image=IMAGE, secret="ab" * 16)
    deployment = one(manifests, "Deployment", "worker")
    assert deployment["spec"]["replicas"] == workers
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    offered = round(memory * GIB_MIB)
    env = env_of(container)
    assert env["SPARK_WORKER_CORES"]["value"] == str(cores)
    assert env["SPARK_WORKER_MEMORY"]["value"] == f"{offered}m"
    # The pod holds what executors are offered, the worker JVM and the executors' non-heap.
    pod_mib = offered + 256 + 256 + max(384, offered // 10)
    assert container["resources"] == {
        "requests": {"cpu": str(cores), "memory": f"{pod_mib}Mi"},
        "limits": {"cpu": str(cores), "memory": f"{pod_mib}Mi"},
    }
    assert container["image"] == IMAGE
    assert container["command"] == ["tini", "-g", "--", "spark-class", "org.apache.spark.deploy.worker.Worker",
                                    f"spark://spark-abc123def456.{NAMESPACE}.svc:7077"]


def test_spark_master_and_service():
    manifests, _ = spark_cluster()
    assert [m["kind"] for m in manifests] == ["Secret", "NetworkPolicy", "Service", "Pod", "Deployment"]
    master = one(manifests, "Pod", "master")
    assert master["metadata"]["name"] == "spark-abc123def456-master"
    assert master["spec"]["restartPolicy"] == "Never"
    container = master["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["command"][-2:] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    env = env_of(container)
    assert env["SPARK_LOCAL_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["SPARK_MASTER_HOST"]["value"] == "$(SPARK_LOCAL_IP)"
    assert (env["SPARK_MASTER_PORT"]["value"], env["SPARK_MASTER_WEBUI_PORT"]["value"]) == ("7077", "8080")
    service = one(manifests, "Service")
    assert service["metadata"]["name"] == "spark-abc123def456"
    assert service["spec"]["type"] == "ClusterIP"
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(7077, "spark"), (8080, "ui")}
    # The Service leads to the master alone.
    assert selects({"matchLabels": service["spec"]["selector"]}, master["metadata"]["labels"])
    worker_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selects({"matchLabels": service["spec"]["selector"]}, worker_labels)
    named_ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resources-kubernetes")
    config = folder / "officina.yaml"
    config.write_text(f"state_dir: {folder / 'state'}\nsessions: {{spawner: kubernetes}}\n")
    return load_settings(config)


@pytest.mark.parametrize("username", list(USER_SLUGS))
def test_spark_workers_mount_the_home_kubespawner_made(platform, username):
    async def session_claim():
        return offline_spawner(platform, username, ["officina"]).pvc_name

    manifests, _ = spark_cluster(username)
    spec = one(manifests, "Deployment")["spec"]["template"]["spec"]
    home = {v["name"]: v for v in spec["volumes"]}["home"]
    assert home == {"name": "home", "persistentVolumeClaim": {"claimName": run_coroutine(session_claim())}}
    mount = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}["home"]
    assert mount["mountPath"] == "/home/jovyan"
    assert env_of(spec["containers"][0])["BEARER_TOKEN_FILE"]["value"] == TOKEN_FILE
    # The master runs no user code: no home there.
    assert "home" not in {v["name"] for v in one(manifests, "Pod")["spec"]["volumes"]}


def test_spark_image_defaults_to_the_catalogue_cpu_image(platform):
    manifests = rk.render_for_settings(platform, "spark", ["alice"], namespace=NAMESPACE)
    images = {c["image"] for m in manifests for spec in pod_specs(m) for c in spec["containers"]}
    assert images == {default_cluster_image(platform["profiles"])} == {"officina/notebook-cpu:0.1.0"}


@pytest.mark.parametrize("owner_name", ["alice", AWKWARD_USER])
def test_spark_network_policy_admits_the_owner_only(platform, owner_name):
    """Truth table over the session pods KubeSpawner renders: the owner's session reaches
    the master and the workers on any port, another user's does not, nor any other pod;
    the resource manager's (hub) pod reaches the master's UI port only."""
    manifests, _ = spark_cluster(owner_name)
    policies = of_kind(manifests, "NetworkPolicy")
    master = one(manifests, "Pod")["metadata"]["labels"]
    worker = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    sessions = {name: render_pod_manifest(platform, name, ["officina"], None)["metadata"]["labels"]
                for name in ("alice", "bob", AWKWARD_USER)}
    other_cluster, _ = spark_cluster("bob")
    hub = {"app": "jupyterhub", "component": "hub", "release": "officina"}
    table = {
        "owner's session": (sessions[owner_name], {7077: True, 8080: True, 40123: True}),
        "another user's session": (sessions["bob" if owner_name == "alice" else "alice"],
                                   {7077: False, 8080: False, 40123: False}),
        "a worker of the cluster": (worker, {7077: True, 8080: True, 40123: True}),
        "the hub": (hub, {7077: False, 8080: True, 40123: False}),
        "another cluster's worker": ({**one(other_cluster, "Deployment")["spec"]["template"]["metadata"]["labels"],
                                      rk.RESOURCE_LABEL: "0therc1uster"}, {7077: False, 8080: False, 40123: False}),
        "a pod of the owner that is not a session": ({"hub.jupyter.org/username": USER_SLUGS[owner_name]},
                                                     {7077: False, 8080: False, 40123: False}),
    }
    for who, (labels, ports) in table.items():
        for port, expected in ports.items():
            for target in (master, worker):
                assert admits(policies, target, labels, port) is expected, f"{who} -> port {port}"


# --- HTCondor workers ---------------------------------------------------------------------


def test_condor_workers_run_only_the_owners_jobs():
    manifests = condor_workers("alice", workers=3)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "NetworkPolicy", "Deployment"]
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    config = condor_config(one(manifests, "ConfigMap")["data"]["50-officina-execute.conf"])
    account = system_account_name("alice")
    assert account == "officina-alice"
    assert config["START"] == '(TARGET.Owner == "officina-alice")'
    assert config["OfficinaResource"] == '"abc123def456"'
    assert config["OfficinaOwner"] == '"officina-alice"'
    assert {"OfficinaResource", "OfficinaOwner", "START"} <= set(config["STARTD_ATTRS"].split())
    assert (config["NUM_CPUS"], config["MEMORY"]) == ("4", "2048")
    assert config["SLOT_TYPE_1_PARTITIONABLE"] == "True"

    # HTCondor's own matchmaking: alice's job matches the slot, bob's does not.
    slot = classad2.ClassAd({"OfficinaResource": "abc123def456", "OfficinaOwner": account})
    slot["START"] = classad2.ExprTree(config["START"])
    slot["Requirements"] = classad2.ExprTree("START")
    for job_owner, expected in (("officina-alice", True), ("officina-bob", False)):
        job = classad2.ClassAd({"Owner": job_owner})
        job["Requirements"] = classad2.ExprTree('TARGET.OfficinaResource == "abc123def456"')
        assert job.symmetricMatch(slot) is expected, job_owner

    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == rk.CONDOR_EXECUTE_IMAGE
    assert container["resources"]["limits"] == {"cpu": "4", "memory": f"{2048 + 256}Mi"}
    assert container["command"][-1].endswith("exec condor_master -f")


def test_condor_workers_join_with_a_token_from_a_secret():
    manifests = condor_workers("alice")
    spec = one(manifests, "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert "env" not in container and "envFrom" not in container
    token = {v["name"]: v for v in spec["volumes"]}["condor-token"]
    assert token["secret"] == {"secretName": "officina-condor-execute-officina-alice", "defaultMode": 0o400,
                               "items": [{"key": "token", "path": "officina-execute"}]}
    mount = {m["name"]: m for m in container["volumeMounts"]}["condor-token"]
    assert mount == {"name": "condor-token", "mountPath": "/etc/condor/tokens.d", "readOnly": True}
    common = condor_config(one(manifests, "ConfigMap")["data"]["10-officina-pool.conf"])
    assert common["SEC_TOKEN_DIRECTORY"] == "/etc/condor/tokens.d"
    assert common["COLLECTOR_HOST"] == "$(CONDOR_HOST):9618"
    assert common["CONDOR_HOST"] == f"officina-condor.{NAMESPACE}.svc"
    assert common["SEC_DEFAULT_AUTHENTICATION_METHODS"] == "IDTOKENS"
    assert rk.execute_token_identity("officina-alice") == "execute.officina-alice@officina"
    assert set(rk.EXECUTE_TOKEN_AUTHZ) == {"READ", "ADVERTISE_STARTD", "ADVERTISE_MASTER"}


# --- the HTCondor pool --------------------------------------------------------------------


def test_the_pool_has_a_schedd_per_user_for_that_user_only():
    users = ["alice", "bob", AWKWARD_USER]
    manifests = rk.render_condor_pool(namespace=NAMESPACE, users=users)
    accounts = sorted(system_account_name(u) for u in users)
    data = one(manifests, "ConfigMap")["data"]
    schedds = [m for m in of_kind(manifests, "Deployment") if m["metadata"]["labels"][rk.COMPONENT_LABEL] == "schedd"]
    assert sorted(m["metadata"]["name"] for m in schedds) == [f"officina-condor-schedd-{a}" for a in accounts]
    daemons = {"condor@officina", "root@officina"}
    for account in accounts:
        config = condor_config(data[f"20-schedd-{account}.conf"])
        assert config["SCHEDD_NAME"] == f"{account}@officina"
        for right in ("ALLOW_READ", "ALLOW_WRITE"):
            assert set(config[right].split()) == {f"{account}@officina"} | daemons, right
        deployment = next(m for m in schedds if m["metadata"]["name"] == f"officina-condor-schedd-{account}")
        spec = deployment["spec"]["template"]["spec"]
        items = {v["name"]: v for v in spec["volumes"]}["condor-config"]["configMap"]["items"]
        assert [i["key"] for i in items] == ["10-officina-pool.conf", f"20-schedd-{account}.conf"]
        claim = {v["name"]: v for v in spec["volumes"]}["condor-spool"]["persistentVolumeClaim"]["claimName"]
        assert claim in {m["metadata"]["name"] for m in of_kind(manifests, "PersistentVolumeClaim")}
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}

    common = condor_config(data["10-officina-pool.conf"])
    assert common["SEC_DEFAULT_AUTHENTICATION"] == "REQUIRED"
    assert common["SEC_DEFAULT_ENCRYPTION"] == common["SEC_DEFAULT_INTEGRITY"] == "REQUIRED"
    assert "ANONYMOUS" not in json.dumps(data) and "CLAIMTOBE" not in json.dumps(data)
    assert common["SEC_ENABLE_TOKEN_FETCH"] == common["SEC_ENABLE_TOKEN_REQUEST"] == "False"
    assert set(common["ALLOW_WRITE"].split()) == daemons
    assert set(common["ALLOW_ADVERTISE_SCHEDD"].split()) == daemons
    assert set(common["ALLOW_ADVERTISE_STARTD"].split()) == daemons | {"execute.*@officina"}


def test_the_pool_central_manager_and_its_service():
    manifests = condor_pool()
    service = one(manifests, "Service")
    assert service["metadata"]["name"] == "officina-condor"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(9618, "condor")]
    cm = one(manifests, "Deployment", "central-manager")
    assert selects({"matchLabels": service["spec"]["selector"]}, cm["spec"]["template"]["metadata"]["labels"])
    spec = cm["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The signing key and the daemons' token are referred to, never rendered.
    assert volumes["condor-key"]["secret"]["secretName"] == "officina-condor-pool-key"
    assert volumes["condor-key"]["secret"]["items"] == [{"key": "POOL", "path": "POOL"}]
    assert volumes["condor-token"]["secret"]["secretName"] == "officina-condor-daemon-token"
    assert not of_kind(manifests, "Secret")
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["condor-key"] == "/etc/condor/passwords.d"
    config = condor_config(one(manifests, "ConfigMap")["data"]["20-central-manager.conf"])
    assert config["COLLECTOR_REQUIREMENTS"] == rk.collector_requirements()


def test_the_collector_binds_an_execute_nodes_ads_to_its_owner():
    """COLLECTOR_REQUIREMENTS, evaluated by HTCondor's ClassAd library on ads as the
    collector sees them (with the AuthenticatedIdentity it stamps): an execute token only
    advertises slots of its own owner; ads that claim no owner are left to ALLOW_*."""
    cases = [
        ({"OfficinaOwner": "officina-alice", "AuthenticatedIdentity": "execute.officina-alice@officina"}, True),
        ({"OfficinaOwner": "officina-alice", "AuthenticatedIdentity": "execute.officina-bob@officina"}, False),
        ({"OfficinaOwner": "officina-alice", "AuthenticatedIdentity": "officina-alice@officina"}, False),
        ({"OfficinaOwner": "officina-alice"}, False),
        ({"AuthenticatedIdentity": "condor@officina"}, True),
    ]
    for attributes, expected in cases:
        ad = classad2.ClassAd(attributes)
        ad["CollectorRequirements"] = classad2.ExprTree(rk.collector_requirements())
        assert ad.eval("CollectorRequirements") is expected, attributes


def test_a_schedd_sends_jobs_to_their_owners_slots_only():
    """The schedd's transform (as condor_transform_ads applies it, see the HTCondor test
    below) and HTCondor's matchmaking: alice's job matches alice's slot, never bob's, even
    a slot bob advertises to take anyone's job."""
    transformed = "(MY.OfficinaRequirements) && (TARGET.OfficinaOwner =?= MY.Owner)"
    assert rk.owner_slots_transform_lines()[3].strip() == f"SET Requirements {transformed}"
    job = classad2.ClassAd({"Owner": "officina-alice"})
    job["OfficinaRequirements"] = classad2.ExprTree("TARGET.Cpus >= 1")
    job["Requirements"] = classad2.ExprTree(transformed)
    for slot_owner, expected in (("officina-alice", True), ("officina-bob", False)):
        slot = classad2.ClassAd({"OfficinaOwner": slot_owner, "Cpus": 4})
        slot["Requirements"] = classad2.ExprTree("true")
        assert job.symmetricMatch(slot) is expected, slot_owner


def test_condor_network_policies():
    pool = condor_pool(["alice", "bob"])
    workers = condor_workers("alice")
    policies = of_kind(pool, "NetworkPolicy") + of_kind(workers, "NetworkPolicy")
    schedd = {m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"] for m in of_kind(pool, "Deployment")}
    alice_schedd, bob_schedd = schedd["officina-condor-schedd-officina-alice"], schedd["officina-condor-schedd-officina-bob"]
    cm = schedd["officina-condor-central-manager"]
    execute = one(workers, "Deployment")["spec"]["template"]["metadata"]["labels"]
    session = {name: {"hub.jupyter.org/username": name, "component": "singleuser-server"} for name in ("alice", "bob")}
    table = [
        (session["alice"], alice_schedd, True), (session["bob"], alice_schedd, False),
        (session["bob"], bob_schedd, True), (cm, alice_schedd, True), (execute, alice_schedd, True),
        (execute, bob_schedd, False), (alice_schedd, execute, True), (bob_schedd, execute, False),
        (cm, execute, True), (session["alice"], execute, False), (session["bob"], cm, True),
    ]
    for source, target, expected in table:
        assert admits(policies, target, source, 9618) is expected, (source, target)


def test_condor_configuration_parses_with_htcondor(tmp_path):
    """HTCondor's own tools read each role's configuration as the pods will (the common file
    and the role's): the daemons, the names and the rights come out as intended, and the
    schedd's transform rewrites a job's Requirements. Needs the embedded pool's root."""
    tools = CONDOR_ROOT / "usr/bin/condor_config_val"
    if os.geteuid() != 0 or not tools.exists() or not shutil.which("chroot"):
        pytest.skip("needs root and the pool's HTCondor root (scripts/condor-root.sh)")
    pool = one(condor_pool(["alice"]), "ConfigMap")["data"]
    execute = one(condor_workers("alice"), "ConfigMap")["data"]
    roles = {
        "central-manager": pool["10-officina-pool.conf"] + pool["20-central-manager.conf"],
        "schedd": pool["10-officina-pool.conf"] + pool["20-schedd-officina-alice.conf"],
        "execute": execute["10-officina-pool.conf"] + execute["50-officina-execute.conf"],
    }
    folder = Path(tempfile.mkdtemp(prefix="officina-k8s-", dir=CONDOR_ROOT / "tmp"))
    try:
        inside = "/tmp/" + folder.name
        for role, text in roles.items():
            (folder / f"{role}.conf").write_text(text)
        (folder / "job.ad").write_text('Owner = "officina-alice"\nRequirements = TARGET.Cpus >= 1\n')

        def in_root(role: str, *argv: str, accept=(0,)) -> str:
            result = subprocess.run(
                ["chroot", str(CONDOR_ROOT), "/usr/bin/env", "-i", f"CONDOR_CONFIG={inside}/{role}.conf",
                 "PATH=/usr/bin:/bin", *argv], capture_output=True, text=True, timeout=60)
            assert result.returncode in accept and not result.stderr.strip(), result.stderr
            return result.stdout

        def value(role: str, name: str) -> str:
            return in_root(role, "condor_config_val", name).strip()

        assert value("central-manager", "DAEMON_LIST").split() == ["MASTER", "COLLECTOR", "NEGOTIATOR"]
        assert value("central-manager", "COLLECTOR_REQUIREMENTS") == rk.collector_requirements()
        assert value("schedd", "DAEMON_LIST").split() == ["MASTER", "SCHEDD"]
        assert value("schedd", "SCHEDD_NAME") == "officina-alice@officina"
        assert set(value("schedd", "ALLOW_WRITE").split()) == {"officina-alice@officina", "condor@officina", "root@officina"}
        assert value("execute", "DAEMON_LIST").split() == ["MASTER", "STARTD"]
        assert value("execute", "START") == '(TARGET.Owner == "officina-alice")'
        assert value("execute", "COLLECTOR_HOST") == f"officina-condor.{NAMESPACE}.svc:9618"
        # condor_transform_ads 23 exits 1 also when it transformed the ad: its output tells.
        transformed = in_root("schedd", "condor_transform_ads", "-jobtransforms", "OfficinaOwnSlots", f"{inside}/job.ad",
                              accept=(0, 1))
        assert "Requirements = (MY.OfficinaRequirements) && (TARGET.OfficinaOwner =?= MY.Owner)" in transformed
        assert "OfficinaRequirements = TARGET.Cpus >= 1" in transformed
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_pool_users_that_share_an_account_are_refused():
    with pytest.raises(BackendError, match="at least one user"):
        rk.render_condor_pool(namespace=NAMESPACE, users=[])
    # Duplicates of one name are one user, not a collision.
    assert len(of_kind(condor_pool(["alice", "alice"]), "PersistentVolumeClaim")) == 1


# --- DEEPaaS model servers ----------------------------------------------------------------


def test_model_server_objects_and_what_the_options_ask():
    manifests = model_server(cores=3, memory=2.5)
    assert [m["kind"] for m in manifests] == ["NetworkPolicy", "Service", "Deployment"]
    deployment = one(manifests, "Deployment", "server")
    assert deployment["metadata"]["name"] == "model-abc123def456-server"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == rk.MODEL_SERVER_IMAGE == "officina/model-server:0.1.0"
    assert container["command"] == ["tini", "-g", "--", "deepaas-run", "--listen-ip", "0.0.0.0", "--listen-port", "5000",
                                    "--model-name", "officina_digits"]
    # One server of worker_cores and worker_memory, memory requested = limit.
    assert container["resources"] == {"requests": {"cpu": "3", "memory": f"{round(2.5 * GIB_MIB)}Mi"},
                                      "limits": {"cpu": "3", "memory": f"{round(2.5 * GIB_MIB)}Mi"}}
    env = env_of(container)
    assert env["OFFICINA_MODEL_DIR"]["value"] == "/home/jovyan/.officina/models/officina_digits"
    assert env["HOME"]["value"] == "/home/jovyan" and env["BEARER_TOKEN_FILE"]["value"] == TOKEN_FILE
    # A shipped model: imported from the image, nothing of the home on its path.
    assert "PYTHONPATH" not in env and not of_kind(manifests, "ConfigMap")
    assert [m["name"] for m in container["volumeMounts"]] == ["home"]
    assert container["volumeMounts"][0]["mountPath"] == "/home/jovyan"
    # No secret reaches it: neither a Secret volume nor an environment from one.
    assert not [v for v in spec["volumes"] if "secret" in v] and "envFrom" not in container
    assert not [e for e in container["env"] if "valueFrom" in e]


@pytest.mark.parametrize("username", ["alice", AWKWARD_USER])
def test_model_server_mounts_the_home_kubespawner_made(platform, username):
    async def session_claim():
        return offline_spawner(platform, username, ["officina"]).pvc_name

    spec = one(model_server(username), "Deployment")["spec"]["template"]["spec"]
    home = {v["name"]: v for v in spec["volumes"]}["home"]
    assert home == {"name": "home", "persistentVolumeClaim": {"claimName": run_coroutine(session_claim())}}


def test_model_server_readiness_probe_and_service():
    manifests = model_server()
    container = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/v2/models/officina_digits/", "port": "api"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"api": 5000}
    service = one(manifests, "Service")
    assert service["metadata"]["name"] == "model-abc123def456"
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(5000, "api")]
    template_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": service["spec"]["selector"]}, template_labels)
    # An own package's probe asks for the package's model.
    own = one(model_server(package="work/echo_model"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert own["readinessProbe"]["httpGet"]["path"] == "/v2/models/echo_model/"
    assert own["command"][-2:] == ["--model-name", "echo_model"]
    assert env_of(own)["OFFICINA_MODEL_DIR"]["value"] == "/home/jovyan/.officina/models/echo_model"


@pytest.mark.parametrize("package,pythonpath", [
    ("models/my_model", "/home/jovyan/models:/opt/officina/model-site"),
    ("my_model", "/home/jovyan:/opt/officina/model-site"),
    ("a/b/my_model/", "/home/jovyan/a/b:/opt/officina/model-site"),
])
def test_model_server_of_an_own_package_declares_its_entry_point(tmp_path, package, pythonpath):
    """The package's parent folder in the home comes first on PYTHONPATH, then a folder
    holding a generated distribution whose entry point `<model> = <model>` in the
    `deepaas.v2.model` group is what DEEPaaS finds the model by. Laid out as the kubelet
    writes a ConfigMap volume (the items' paths, behind `..data`), importlib.metadata reads
    that entry point, and it loads the owner's package from the home."""
    manifests = model_server(package=package)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "NetworkPolicy", "Service", "Deployment"]
    config_map = one(manifests, "ConfigMap")
    assert config_map["metadata"]["name"] == "model-abc123def456-package" and config_map["immutable"] is True
    spec = one(manifests, "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert env_of(container)["PYTHONPATH"]["value"] == pythonpath
    volume = {v["name"]: v for v in spec["volumes"]}["model-site"]["configMap"]
    assert volume["name"] == config_map["metadata"]["name"]
    mount = {m["name"]: m for m in container["volumeMounts"]}["model-site"]
    assert mount == {"name": "model-site", "mountPath": rk.MODEL_SITE_DIR, "readOnly": True}
    assert pythonpath.split(":")[-1] == rk.MODEL_SITE_DIR

    # The volume as the kubelet makes it, the home with the owner's package.
    site = tmp_path / "site"
    for item in volume["items"]:
        target = site / "..data" / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(config_map["data"][item["key"]])
    for top in {Path(item["path"]).parts[0] for item in volume["items"]}:
        (site / top).symlink_to(Path("..data") / top)
    home = tmp_path / "home"
    (home / package).mkdir(parents=True)
    (home / package / "__init__.py").write_text("OWN = True\n")
    path = [str(home / entry.removeprefix("/home/jovyan").lstrip("/")) for entry in pythonpath.split(":")[:-1]] + [str(site)]
    program = (
        "import importlib.metadata as m\n"
        "(ep,) = [ep for d in m.distributions() for ep in d.entry_points if ep.group == 'deepaas.v2.model']\n"
        "print(ep.name, ep.value, ep.load().OWN)\n"
    )
    found = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path[:0] = {path!r}\n{program}"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["my_model", "my_model", "True"]


@pytest.mark.parametrize("options,message", [
    ({"package": "../etc"}, "package: a folder inside your home"),
    ({"package": "/etc/passwd"}, "package: a folder inside your home"),
    ({"package": "models/../../x"}, "package: a folder inside your home"),
    ({"package": "models/my-model"}, "must end in a Python package name"),
    ({"model": "officina_digits; rm -rf"}, "model: a model's entry point name"),
    ({"model": ""}, "model: a model's entry point name"),
    ({"worker_cores": 0}, "worker_cores"),
    ({"privileged": True}, "unknown options"),
])
def test_model_server_options_are_checked_again(options, message):
    with pytest.raises(BackendError, match=re.escape(message)):
        rk.render_model_server(model_resource(**options), owner(), namespace=NAMESPACE)
    api = InMemoryApiServer(auto_settle=True)
    with pytest.raises(BackendError, match=re.escape(message)):
        model_backend(api).start(model_resource(**options), owner())
    assert api.objects == {}


@pytest.mark.parametrize("owner_name", ["alice", AWKWARD_USER])
def test_model_server_network_policy_admits_the_hub_only(platform, owner_name):
    """Truth table over the pods KubeSpawner renders: only the hub's pod (the resource
    manager's proxy, which checks the owner and the groups it is shared with) reaches the
    server, and only on 5000; not the owner's session, not another user's, not a member of
    a group it is shared with, not another resource's pods."""
    manifests = model_server(owner_name, package="models/my_model")
    policies = of_kind(manifests, "NetworkPolicy")
    server = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    sessions = {name: render_pod_manifest(platform, name, ["officina"], None)["metadata"]["labels"]
                for name in ("alice", "bob", AWKWARD_USER)}
    spark, _ = spark_cluster(owner_name)
    hub = {"app": "jupyterhub", "component": "hub", "release": "officina"}
    table = {
        "the hub": (hub, {5000: True, 8080: False}),
        "the owner's session": (sessions[owner_name], {5000: False, 8080: False}),
        "another user's session": (sessions["bob" if owner_name == "alice" else "alice"], {5000: False}),
        "the owner's Spark worker": (one(spark, "Deployment")["spec"]["template"]["metadata"]["labels"], {5000: False}),
        "another model server": ({**server, rk.RESOURCE_LABEL: "0therm0del00"}, {5000: False}),
        "a proxy pod that is not the hub": ({"app": "jupyterhub", "component": "proxy"}, {5000: False}),
    }
    for who, (labels, ports) in table.items():
        for port, expected in ports.items():
            assert admits(policies, server, labels, port) is expected, f"{who} -> port {port}"
    # The policy's ingress names the hub alone.
    (rule,) = policies[0]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": rk.HUB_POD_LABELS}}]
    assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
    custom = rk.render_model_server(model_resource(), owner(), namespace=NAMESPACE, hub_pod_labels={"app": "officina-hub"})
    assert one(custom, "NetworkPolicy")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app": "officina-hub"}


# --- the backends against the API server stand-in -----------------------------------------


def spark_backend(api: InMemoryApiServer, **kwargs) -> rk.KubernetesSparkBackend:
    return rk.KubernetesSparkBackend(api, namespace=NAMESPACE, image=IMAGE, ui_prefix=UI_PREFIX, timeout=2, poll=0.01,
                                     **kwargs)


def worker_pods(api: InMemoryApiServer, rid: str = "abc123def456", component: str = "worker") -> list[dict]:
    return api.list("Pod", NAMESPACE, {rk.RESOURCE_LABEL: rid, rk.COMPONENT_LABEL: component})


def test_spark_backend_start_scale_stop():
    api = InMemoryApiServer()
    backend = spark_backend(api)
    cluster = resource(workers=2)
    backend.start(cluster, owner())

    assert api.names() == {"spark-abc123def456-conf", "spark-abc123def456", "spark-abc123def456-master",
                           "spark-abc123def456-worker"}
    assert cluster.endpoints == {"master": f"spark://spark-abc123def456.{NAMESPACE}.svc:7077",
                                 "ui": f"http://spark-abc123def456.{NAMESPACE}.svc:8080/"}
    secret = cluster.state["secret"]
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    stored = api.read("Secret", NAMESPACE, "spark-abc123def456-conf")
    assert f"spark.authenticate.secret {secret}\n" in base64.b64decode(stored["data"]["spark-defaults.conf"]).decode()
    assert secret not in json.dumps([o for (k, _, _), o in api.objects.items() if k != "Secret"])
    assert cluster.state["namespace"] == NAMESPACE
    assert [k for k, _ in cluster.state["objects"]] == ["Secret", "NetworkPolicy", "Service", "Pod", "Deployment"]
    # The policy exists before any pod does.
    creates = [kind for verb, kind, _ in api.requests if verb == "create"]
    assert creates.index("NetworkPolicy") < creates.index("Pod")

    api.settle()
    assert len(worker_pods(api)) == 2
    assert backend.alive(cluster) == (True, 2, "2 of 2 workers running")

    for workers in (3, 1):
        backend.scale(cluster, owner(), workers)
        api.settle()
        deployment = api.read("Deployment", NAMESPACE, "spark-abc123def456-worker")
        assert deployment["spec"]["replicas"] == workers
        assert len(worker_pods(api)) == workers
        assert backend.alive(cluster)[:2] == (True, workers)
        # The master, its Service and its configuration are untouched by scaling.
        assert {"spark-abc123def456-master", "spark-abc123def456", "spark-abc123def456-conf"} <= api.names()

    backend.stop(cluster)
    assert api.objects == {}
    backend.stop(cluster)  # again: nothing to do, no error
    assert api.objects == {}
    alive, _, message = backend.alive(cluster)
    assert alive is False and "gone" in message


def test_spark_backend_stop_finds_what_a_dead_start_left(tmp_path):
    """A manager that died during a start recorded less than it made: stop deletes by label
    too, and the NetworkPolicy after the pods."""
    api = InMemoryApiServer()
    backend = spark_backend(api)
    cluster = resource()
    backend.start(cluster, owner())
    api.settle()
    half = Resource.from_json(json.loads(json.dumps(cluster.to_json())))
    half.state["objects"] = half.state["objects"][:1]
    api.requests.clear()
    backend.stop(half)
    assert api.objects == {}
    deletes = [kind for verb, kind, _ in api.requests if verb == "delete"]
    assert deletes.index("NetworkPolicy") > max(i for i, kind in enumerate(deletes) if kind in ("Pod", "Deployment"))
    # Someone else's cluster is never touched.
    other = resource(rid="0therc1uster")
    backend.start(other, owner("bob"))
    backend.stop(cluster)
    assert api.names() >= {"spark-0therc1uster-master"}


@pytest.mark.parametrize("status,expected", [
    (image_pull_failure, r"cannot run: ImagePullBackOff: Back-off pulling image \"registry.example.org"),
    (unschedulable, r"timed out after 2 s waiting for the Spark master pod .*3 Insufficient cpu"),
])
def test_spark_backend_start_that_cannot_run_leaves_nothing(status, expected):
    api = InMemoryApiServer(pod_status=status)
    cluster = resource()
    with pytest.raises(BackendError, match=expected):
        spark_backend(api).start(cluster, owner())
    assert api.objects == {}


def test_spark_backend_refused_create_leaves_nothing():
    api = InMemoryApiServer()
    api.refuse["Deployment"] = 'exceeded quota: compute-resources, requested: limits.cpu=4'
    with pytest.raises(BackendError, match=r"cannot create Deployment spark-abc123def456-worker .*exceeded quota"):
        spark_backend(api).start(resource(), owner())
    assert api.objects == {}


def test_spark_backend_reports_a_dead_master():
    api = InMemoryApiServer()
    backend = spark_backend(api)
    cluster = resource()
    backend.start(cluster, owner())
    api.settle()
    master = api.objects[("Pod", NAMESPACE, "spark-abc123def456-master")]
    master["status"] = {"phase": "Failed", "reason": "Evicted", "containerStatuses": []}
    alive, workers, message = backend.alive(cluster)
    assert (alive, workers) == (False, 2) and "Evicted" in message
    with pytest.raises(BackendError, match="not running"):
        backend.scale(cluster, owner(), 3)
    del api.objects[("Pod", NAMESPACE, "spark-abc123def456-master")]
    assert backend.alive(cluster)[0] is False


def test_spark_backend_is_not_busy_when_the_master_does_not_answer():
    api = InMemoryApiServer()
    backend = spark_backend(api, status_url="http://127.0.0.1:9/{id}/json/")
    cluster = resource()
    backend.start(cluster, owner())
    assert backend.busy(cluster) is False


def test_invalid_requests_are_refused_before_anything_is_made():
    api = InMemoryApiServer()
    backend = spark_backend(api)
    for bad, message in ((resource(rid="../etc"), "invalid resource id"),
                         (resource(cores=0), "worker_cores"),
                         (Resource(id="abc", kind="spark", owner="alice", options={"worker_cores": 1, "worker_memory": 1,
                                                                                  "privileged": True}, workers=1), "unknown")):
        with pytest.raises(BackendError, match=message):
            backend.start(bad, owner())
    assert api.objects == {}
    with pytest.raises(BackendError, match="cannot scale"):
        backend.scale(resource(), owner(), -1)


def condor_backend(api: InMemoryApiServer) -> rk.KubernetesCondorBackend:
    return rk.KubernetesCondorBackend(api, namespace=NAMESPACE, timeout=2, poll=0.01)


def execute_token_secret(account: str) -> dict:
    """The Secret the platform's token minting makes (its value is not a real token)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": f"officina-condor-execute-{account}", "namespace": NAMESPACE},
            "data": {"token": base64.b64encode(b"not-a-real-token").decode()}}


def test_condor_backend_needs_the_owners_execute_token():
    api = InMemoryApiServer()
    expected = r"alice has no HTCondor execute token yet \(Secret officina-condor-execute-officina-alice"
    with pytest.raises(BackendError, match=expected):
        condor_backend(api).start(resource("condor"), owner())
    assert api.objects == {}


def test_condor_backend_start_scale_stop():
    api = InMemoryApiServer()
    api.create(execute_token_secret("officina-alice"))
    backend = condor_backend(api)
    workers = resource("condor", workers=2, cores=1, memory=1)
    backend.start(workers, owner())
    assert workers.endpoints == {"pool": f"officina-condor.{NAMESPACE}.svc:9618",
                                 "requirements": 'TARGET.OfficinaResource == "abc123def456"'}
    assert api.names() == {"officina-condor-execute-officina-alice", "condor-abc123def456-execute", "condor-abc123def456"}
    for count in (2, 3, 1):
        if count != 2:
            backend.scale(workers, owner(), count)
        api.settle()
        assert len(worker_pods(api, component="execute")) == count
        assert backend.alive(workers) == (True, count, f"{count} of {count} workers running")
    assert backend.busy(workers) is False
    backend.stop(workers)
    backend.stop(workers)
    # Only the owner's token (the platform's, not the resource's) is left.
    assert api.names() == {"officina-condor-execute-officina-alice"}


def model_backend(api: InMemoryApiServer, **kwargs) -> rk.KubernetesModelBackend:
    return rk.KubernetesModelBackend(api, namespace=NAMESPACE, timeout=2, poll=0.01, **kwargs)


@pytest.mark.parametrize("package", ["", "models/my_model"])
def test_model_backend_start_stop(package):
    api = InMemoryApiServer(auto_settle=True)
    backend = model_backend(api)
    server = model_resource(package)
    backend.start(server, owner())
    model = "my_model" if package else "officina_digits"
    assert server.endpoints == {"api": f"http://model-abc123def456.{NAMESPACE}.svc:5000/", "model": model}
    expected = {"model-abc123def456", "model-abc123def456-server"} | ({"model-abc123def456-package"} if package else set())
    assert api.names() - api.names("Pod") == expected
    assert [k for k, _ in server.state["objects"]] == (["ConfigMap"] if package else []) + [
        "NetworkPolicy", "Service", "Deployment"]
    assert server.state["namespace"] == NAMESPACE and server.state["model"] == model
    # The policy exists before any pod does, and start returned with the server ready.
    creates = [kind for verb, kind, _ in api.requests if verb == "create"]
    assert creates.index("NetworkPolicy") < creates.index("Pod")
    assert len(worker_pods(api, component="server")) == 1
    assert backend.alive(server) == (True, 1, f"serving {model}")
    assert backend.busy(server) is False

    backend.stop(server)
    assert api.objects == {}
    backend.stop(server)  # again: nothing to do, no error
    assert api.objects == {}
    alive, _, message = backend.alive(server)
    assert alive is False and "gone" in message


def test_model_backend_is_one_server():
    api = InMemoryApiServer(auto_settle=True)
    backend = model_backend(api)
    server = model_resource()
    backend.start(server, owner())
    for workers in (2, 0, True):
        with pytest.raises(BackendError, match="a model server is one server"):
            backend.scale(server, owner(), workers)
    backend.scale(server, owner(), 1)
    assert api.read("Deployment", NAMESPACE, "model-abc123def456-server")["spec"]["replicas"] == 1
    assert backend.alive(server)[:2] == (True, 1)
    two = model_resource(rid="0therm0del00")
    two.workers = 2
    with pytest.raises(BackendError, match="a model server is one server"):
        backend.start(two, owner())
    assert api.names("Deployment") == {"model-abc123def456-server"}
    backend.stop(server)
    assert api.objects == {}


@pytest.mark.parametrize("status,expected", [
    (image_pull_failure, r"model server pod .* cannot run: ImagePullBackOff: Back-off pulling image \"officina/model-server"),
    (unschedulable, r"timed out after 2 s waiting for the model server: .*3 Insufficient cpu"),
])
def test_model_backend_start_that_cannot_run_leaves_nothing(status, expected):
    api = InMemoryApiServer(pod_status=status, auto_settle=True)
    with pytest.raises(BackendError, match=expected):
        model_backend(api).start(model_resource("models/my_model"), owner())
    assert api.objects == {}


def test_model_backend_reports_a_server_that_cannot_run():
    """An own package that does not import makes DEEPaaS exit at each start: the pod ends in
    CrashLoopBackOff, and `alive` says so (the manager marks the record FAILED)."""
    api = InMemoryApiServer(auto_settle=True)
    backend = model_backend(api)
    server = model_resource("models/my_model")
    backend.start(server, owner())
    (pod,) = worker_pods(api, component="server")
    api.objects[("Pod", NAMESPACE, pod["metadata"]["name"])]["status"] = {
        "phase": "Running", "containerStatuses": [{"name": "model-server", "ready": False, "state": {
            "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}}]}
    alive, running, message = backend.alive(server)
    assert (alive, running) == (False, 0) and "CrashLoopBackOff" in message, message
    backend.stop(server)
    assert api.objects == {}


# --- the real client adapter ---------------------------------------------------------------


def test_the_kubernetes_asyncio_adapter_calls_methods_that_exist():
    """Without an API server, the adapter is checked against the client's own classes: each
    kind and verb maps to a method taking the arguments the adapter passes."""
    from kubernetes_asyncio import client

    assert set(rk.KubernetesAsyncioApi.METHODS) == set(rk.API_VERSIONS)
    arguments = {"create": {"namespace", "body"}, "read": {"name", "namespace"}, "patch": {"name", "namespace", "body"},
                 "delete": {"name", "namespace"}, "list": {"namespace"}}
    for kind, (api_class, suffix) in rk.KubernetesAsyncioApi.METHODS.items():
        for verb, needed in arguments.items():
            method = getattr(getattr(client, api_class), f"{verb}_namespaced_{suffix}")
            assert needed <= set(inspect.signature(method).parameters), (kind, verb)
        group = rk.API_VERSIONS[kind].rpartition("/")[0].split(".")[0] or "core"
        assert api_class == f"{group.capitalize()}V1Api", kind


def test_the_kubernetes_asyncio_adapter_says_when_no_api_server_answers(tmp_path):
    """The real client, pointed at a port where nothing listens: every call ends in a
    KubernetesApiError the backends turn into a message, not in a client's exception."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "nowhere", "user": {"token": "placeholder"}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nowhere"}}],
    }))
    api = rk.KubernetesAsyncioApi(kubeconfig=str(kubeconfig), timeout=20)
    try:
        manifests, _ = spark_cluster()
        calls = [lambda: api.create(manifests[0]), lambda: api.read("Pod", NAMESPACE, "x"),
                 lambda: api.list("Deployment", NAMESPACE, {rk.RESOURCE_LABEL: "abc"}),
                 lambda: api.patch("Deployment", NAMESPACE, "x", {"spec": {"replicas": 1}}),
                 lambda: api.delete("NetworkPolicy", NAMESPACE, "x")]
        for call in calls:
            with pytest.raises(rk.KubernetesApiError, match="the API server does not answer") as failed:
                call()
            assert failed.value.status == 0
        with pytest.raises(rk.KubernetesApiError, match="not a kind"):
            api.read("Namespace", NAMESPACE, "x")
        backend = rk.KubernetesSparkBackend(api, namespace=NAMESPACE, image=IMAGE, timeout=1, poll=0.01)
        with pytest.raises(BackendError, match="cannot create Secret spark-abc123def456-conf .*does not answer"):
            backend.start(resource(), owner())
    finally:
        api.close()


# --- the command line ----------------------------------------------------------------------


def cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "officina.hub.resources.kubernetes", *arguments],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind,arguments,kinds", [
    ("spark", ["--user", AWKWARD_USER, "--workers", "3"], ["Secret", "NetworkPolicy", "Service", "Pod", "Deployment"]),
    ("condor", ["--user", "alice", "--workers", "2"], ["ConfigMap", "NetworkPolicy", "Deployment"]),
    ("model", ["--user", AWKWARD_USER, "--workers", "1"], ["NetworkPolicy", "Service", "Deployment"]),
    ("model", ["--user", "alice", "--model", "officina_digits", "--package", "models/my_model", "--workers", "1"],
     ["ConfigMap", "NetworkPolicy", "Service", "Deployment"]),
    ("condor-pool", ["--user", "alice", "--user", "bob"], None),
])
def test_command_line_prints_valid_yaml(platform, tmp_path, kind, arguments, kinds):
    config = tmp_path / "officina.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nsessions: {{spawner: kubernetes}}\n")
    printed = cli("--config", str(config), "--kind", kind, "--namespace", NAMESPACE, *arguments)
    assert printed.returncode == 0, printed.stderr
    documents = list(yaml.safe_load_all(printed.stdout))
    for document in documents:
        validate(document)
        assert document["metadata"]["namespace"] == NAMESPACE
    if kinds:
        assert [d["kind"] for d in documents] == kinds
        deployment = one(documents, "Deployment")
        assert deployment["spec"]["replicas"] == int(arguments[-1])
    else:
        assert {d["metadata"]["name"] for d in of_kind(documents, "Deployment")} == {
            "officina-condor-central-manager", "officina-condor-schedd-officina-alice", "officina-condor-schedd-officina-bob"}


@pytest.mark.parametrize("arguments,message", [
    (["--kind", "dask", "--user", "alice"], "argument --kind: invalid choice: 'dask'"),
    (["--kind", "spark", "--user", "a/b"], "error: not a JupyterHub user name: 'a/b'"),
    (["--kind", "spark", "--user", ""], "error: not a JupyterHub user name: ''"),
    (["--kind", "condor-pool", "--user", ".."], "error: not a JupyterHub user name: '..'"),
    (["--kind", "spark", "--user", "alice", "--user", "bob"], "error: a spark resource has one owner"),
    (["--kind", "spark", "--user", "alice", "--workers", "1000"], "error: workers: at most 8, got 1000"),
    (["--kind", "condor-pool", "--user", "alice", "--workers", "2"], "error: --workers is for a resource"),
    (["--kind", "model", "--user", "alice", "--workers", "2"], "error: workers: at most 1, got 2"),
    (["--kind", "model", "--user", "alice", "--model", "nope"], "error: model: one of officina_digits, got 'nope'"),
    (["--kind", "model", "--user", "alice", "--package", "../etc"], "error: package: a folder inside your home"),
    (["--kind", "model", "--user", "alice", "--package", "models/my-model"], "must end in a Python package name"),
    (["--kind", "spark", "--user", "alice", "--package", "models/my_model"], "error: --model and --package are for"),
])
def test_command_line_refuses_clearly(arguments, message):
    refused = cli(*arguments)
    assert refused.returncode == 2
    assert message in refused.stderr
    assert refused.stdout == ""


def test_the_resource_manager_uses_these_backends_when_sessions_run_on_kubernetes(tmp_path):
    """`sessions.spawner: kubernetes`: the manager's engine gets the Kubernetes backends for
    every kind; with no API server (as here) a start fails with a message, not a crash."""
    from officina.hub.resources.contract import BackendError, Owner, Resource
    from officina.hub.resources.setup import engine_from_settings
    from officina.hub.settings import load_settings

    config = tmp_path / "officina.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "sessions": {"spawner": "kubernetes"}}))
    engine = engine_from_settings(load_settings(config).raw)
    assert {kind: type(backend).__name__ for kind, backend in engine.backends.items()} == {
        "spark": "KubernetesSparkBackend", "condor": "KubernetesCondorBackend", "model": "KubernetesModelBackend",
        "app": "KubernetesAppBackend"}
    assert sorted(engine.kinds) == ["app", "condor", "model", "spark"]
    assert engine.backends["model"].image == rk.MODEL_SERVER_IMAGE
    assert engine.kinds["model"].validate({})[0]["model"] == "officina_digits"
    resource = Resource(id="0123456789ab", kind="spark", owner="alice",
                        options={"worker_cores": 1, "worker_memory": 1.0}, workers=1)
    owner = Owner(name="alice", groups=(), account=None, home="/home/jovyan", token_file="/home/jovyan/.officina/bearer_token")
    with pytest.raises(BackendError, match="no Kubernetes API to talk to"):
        engine.backends["spark"].start(resource, owner)
    with pytest.raises(BackendError, match="cannot stop spark 0123456789ab: no Kubernetes API"):
        engine.backends["spark"].stop(resource)

    # Through the engine: the record ends FAILED with both reasons, nothing raised.
    async def ask():
        record = await engine.create("alice", [], "spark", {"workers": 1})
        await asyncio.gather(*engine.tasks)
        return record

    record = asyncio.run(ask())
    assert record.phase.value == "failed" and "no Kubernetes API to talk to" in record.message, record

    async def ask_model():
        record = await engine.create("alice", [], "model", {})
        await asyncio.gather(*engine.tasks)
        return record

    record = asyncio.run(ask_model())
    assert record.kind == "model" and record.phase.value == "failed", record
    assert "no Kubernetes API to talk to" in record.message, record


# --- published Voila apps ------------------------------------------------------------------

APP_TOKENS = ("v0ila-upstream-" + "u" * 20, "hub-app-token-" + "h" * 20)


def app_resource(notebook: str = "apps/digits-app.ipynb", name: str = "alice", rid: str = "abc123def456") -> Resource:
    return Resource(id=rid, kind="app", owner=name, workers=1,
                    options={"notebook": notebook, "share_with": ["officina/users"], "worker_cores": 1, "worker_memory": 1.0})


def app(user: str = "alice", notebook: str = "apps/digits-app.ipynb") -> list[dict]:
    return rk.render_app(app_resource(notebook, user), owner(user), namespace=NAMESPACE, image=IMAGE,
                         base_url="/hub-base/services/resources/apps/abc123def456/",
                         resources_url="https://hub.example.org/hub-base/services/resources/",
                         upstream_token=APP_TOKENS[0], hub_token=APP_TOKENS[1])


def test_app_objects_validate_and_keep_tokens_in_the_secret():
    manifests = app()
    assert [m["kind"] for m in manifests] == ["Secret", "NetworkPolicy", "Service", "Deployment"]
    for manifest in manifests:
        validate(manifest)
    deployment = one(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE and container["workingDir"] == "/home/jovyan/apps"
    assert container["command"][:5] == ["tini", "-g", "--", "voila", "digits-app.ipynb"]
    assert "--Voila.base_url=/hub-base/services/resources/apps/abc123def456/" in container["command"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/hub-base/services/resources/apps/abc123def456/voila/static/voila.js"
    env = env_of(container)
    assert env["OFFICINA_RESOURCES_URL"]["value"] == "https://hub.example.org/hub-base/services/resources/"
    assert env["JUPYTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "app-abc123def456-tokens", "key": "voila-token"}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "hub-token"
    # The tokens are in the Secret's data only, never in the pod's spec.
    everything_else = json.dumps([m for m in manifests if m["kind"] != "Secret"])
    assert not any(token in everything_else for token in APP_TOKENS)
    secret = one(manifests, "Secret")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == dict(zip(rk.APP_TOKEN_KEYS, APP_TOKENS))
    assert container["securityContext"]["runAsNonRoot"] is True


def test_app_network_policy_admits_the_hub_only(platform):
    manifests = app()
    policies = of_kind(manifests, "NetworkPolicy")
    server = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    session = render_pod_manifest(platform, "alice", ["officina"], None)["metadata"]["labels"]
    assert admits(policies, server, {"app": "jupyterhub", "component": "hub", "release": "officina"}, 8866)
    assert not admits(policies, server, session, 8866)  # not even the owner's session: the proxy checks
    assert not admits(policies, server, {"app": "jupyterhub", "component": "proxy"}, 8866)


@pytest.mark.parametrize("notebook", ["../x.ipynb", "apps/notes.txt", "/etc/x.ipynb", "a//b.ipynb", None])
def test_app_options_are_checked_again(notebook):
    with pytest.raises(BackendError, match="notebook: a notebook"):
        rk.render_app(app_resource(notebook), owner(), namespace=NAMESPACE, image=IMAGE, base_url="/x/",
                      resources_url="http://h/", upstream_token="u", hub_token="h")


class RecordedTokens:
    """The hub's token API as the backend sees it (minted and revoked), recorded."""

    def __init__(self):
        self.live: dict[str, tuple[str, list]] = {}

    def mint(self, user, scopes, expires_in, note):
        token_id = f"a{len(self.live) + 1}"
        self.live[token_id] = (user, scopes)
        return token_id, APP_TOKENS[1]

    def revoke(self, user, token_id):
        assert self.live.pop(token_id)[0] == user


def test_app_backend_start_stop_mints_and_revokes_its_token():
    api = InMemoryApiServer(auto_settle=True)
    tokens = RecordedTokens()
    backend = rk.KubernetesAppBackend(api, namespace=NAMESPACE, image=IMAGE, tokens=tokens, token_lifetime=3600,
                                      public_prefix="/services/resources/apps", resources_url="http://hub/services/resources/",
                                      timeout=2, poll=0.01)
    published = app_resource()
    backend.start(published, owner())
    assert tokens.live == {"a1": ("alice", ["access:services!service=resources"])}
    assert published.state["upstream"] == f"http://app-abc123def456.{NAMESPACE}.svc:8866"
    assert backend.upstream_headers(published) == {"Authorization": f"token {published.state['upstream_token']}"}
    assert [k for k, _ in published.state["objects"]] == ["Secret", "NetworkPolicy", "Service", "Deployment"]
    assert backend.busy(published) is True
    with pytest.raises(BackendError, match="cannot be scaled"):
        backend.scale(published, owner(), 2)
    backend.stop(published)
    assert api.objects == {} and tokens.live == {}


@pytest.mark.parametrize("status,expected", [
    (image_pull_failure, r"app pod .* cannot run: ImagePullBackOff"),
    (unschedulable, r"timed out after 2 s waiting for the app: .*3 Insufficient cpu"),
])
def test_app_backend_start_that_cannot_run_leaves_nothing_and_revokes_its_token(status, expected):
    api = InMemoryApiServer(pod_status=status, auto_settle=True)
    tokens = RecordedTokens()
    backend = rk.KubernetesAppBackend(api, namespace=NAMESPACE, image=IMAGE, tokens=tokens, token_lifetime=3600,
                                      public_prefix="/services/resources/apps", resources_url="http://hub/services/resources/",
                                      timeout=2, poll=0.01)
    with pytest.raises(BackendError, match=expected):
        backend.start(app_resource(), owner())
    assert api.objects == {} and tokens.live == {}
