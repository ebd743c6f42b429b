"""KubeSpawner serves the profile catalogue: the pods it would create, checked offline.

No Kubernetes API server exists here. Each manifest is the one KubeSpawner itself builds
(`get_pod_manifest()` after the profile is applied as at start), validated against the
Kubernetes JSON schemas shipped by kubernetes-validate; no pod is started.
"""

from __future__ import annotations

import re
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from tornado import web

from officina.hub.kubernetes import offline_spawner, render_pod_manifest, run_coroutine
from officina.hub.profiles import ChoiceError
from officina.hub.settings import SettingsError, load_settings

# The newest Kubernetes whose schemas kubernetes-validate 1.37 ships.
KUBERNETES_VERSION = "1.37"
GIB = 1024**3

TEST_CATALOGUE = """
profiles:
  - slug: cpu
    display_name: CPU with data
    description: Two cores and the shared data sets.
    default: true
    cpu: {guarantee: 1, limit: 2}
    memory: {guarantee: 2G, limit: 4G}
    env: {OFFICINA_PROFILE: cpu}
    volumes:
      - {name: scratch, mount_path: /scratch, claim: "scratch-{username}"}
      - {name: datasets, mount_path: /data/shared, claim: datasets, read_only: true}
  - slug: a100
    display_name: Two A100
    image: registry.example.org/officina/notebook-gpu:0.2.0
    cpu: {guarantee: 4, limit: 8}
    memory: {guarantee: 16G, limit: 32G}
    gpus: {count: 2, model: NVIDIA-A100-SXM4-80GB}
    groups: [officina/gpu]
  - slug: mig-small
    display_name: A GPU slice
    image: registry.example.org/officina/notebook-gpu:0.2.0
    memory: {guarantee: 4G, limit: 8G}
    gpus: {count: 1, mig: 1g.10gb}
    groups: [officina/gpu, officina/teaching]
"""

HOME_MOUNT = {"name": "home", "mountPath": "/home/jovyan"}
CONTAINER_SECURITY = {
    "runAsUser": 1000,
    "runAsGroup": 100,
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

# What an operator checks in each pod: profile -> expected container and scheduling.
EXPECTED = {
    ("default", "cpu-small"): {
        "image": "officina/notebook-cpu:0.1.0",
        "requests": {"cpu": 0.5, "memory": 1 * GIB},
        "limits": {"cpu": 2.0, "memory": 2 * GIB},
        "node_selector": None,
        "extra_volumes": [],
        "env": {},
    },
    ("default", "cpu-large"): {
        "image": "officina/notebook-cpu:0.1.0",
        "requests": {"cpu": 2.0, "memory": 4 * GIB},
        "limits": {"cpu": 4.0, "memory": 8 * GIB},
        "node_selector": None,
        "extra_volumes": [],
        "env": {},
    },
    ("default", "gpu"): {
        "image": "officina/notebook-gpu:0.1.0",
        "requests": {"cpu": 2.0, "memory": 8 * GIB, "nvidia.com/gpu": "1"},
        "limits": {"cpu": 4.0, "memory": 16 * GIB, "nvidia.com/gpu": "1"},
        "node_selector": None,
        "extra_volumes": [],
        "env": {},
    },
    ("test", "cpu"): {
        "image": "officina/notebook-cpu:0.1.0",
        "requests": {"cpu": 1.0, "memory": 2 * GIB},
        "limits": {"cpu": 2.0, "memory": 4 * GIB},
        "node_selector": None,
        # (volume, mount, read-only); {username} expanded with the user's safe slug.
        "extra_volumes": [
            ("datasets", "datasets", "/data/shared", True),
            ("scratch", "scratch-{slug}", "/scratch", False),
        ],
        "env": {"OFFICINA_PROFILE": "cpu"},
    },
    ("test", "a100"): {
        "image": "registry.example.org/officina/notebook-gpu:0.2.0",
        "requests": {"cpu": 4.0, "memory": 16 * GIB, "nvidia.com/gpu": "2"},
        "limits": {"cpu": 8.0, "memory": 32 * GIB, "nvidia.com/gpu": "2"},
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        "extra_volumes": [],
        "env": {},
    },
    ("test", "mig-small"): {
        "image": "registry.example.org/officina/notebook-gpu:0.2.0",
        "requests": {"cpu": 0.5, "memory": 4 * GIB, "nvidia.com/mig-1g.10gb": "1"},
        "limits": {"cpu": 1.0, "memory": 8 * GIB, "nvidia.com/mig-1g.10gb": "1"},
        "node_selector": None,
        "extra_volumes": [],
        "env": {},
    },
}
GPU_PROFILES = {"gpu", "a100", "mig-small"}
# A member of every group the catalogues name.
ALL_GROUPS = ["officina", "officina/gpu", "officina/teaching"]
# Not a valid Kubernetes name as is: KubeSpawner's safe slug (with a hash against
# collisions) names the pod and the claims.
AWKWARD_USER = "Alice.Smith@example.org"
USER_SLUGS = {"alice": "alice", AWKWARD_USER: "alice-smith-example-org---323a0b32"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@pytest.fixture(scope="module")
def catalogues(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kubernetes")
    default_file = folder / "default.yaml"
    default_file.write_text(f"state_dir: {folder / 'state'}\n")
    test_file = folder / "test.yaml"
    test_file.write_text(f"state_dir: {folder / 'state'}\n{TEST_CATALOGUE}")
    return {"default": load_settings(default_file), "test": load_settings(test_file)}


def by_name(items: list[dict]) -> dict:
    named = {item["name"]: item for item in items}
    assert len(named) == len(items), f"duplicate names in {items}"
    return named


def container_of(manifest: dict) -> dict:
    containers = manifest["spec"]["containers"]
    assert [c["name"] for c in containers] == ["notebook"]
    return containers[0]


@pytest.mark.parametrize("catalogue,slug", list(EXPECTED), ids=[f"{c}-{s}" for c, s in EXPECTED])
@pytest.mark.parametrize("username", list(USER_SLUGS))
def test_pod_manifest_of_each_profile(catalogues, catalogue, slug, username):
    expected = EXPECTED[(catalogue, slug)]
    manifest = render_pod_manifest(catalogues[catalogue], username, ALL_GROUPS, slug)

    assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION
    assert manifest["kind"] == "Pod"
    assert manifest["metadata"]["name"] == f"jupyter-{USER_SLUGS[username]}"
    assert DNS_SUBDOMAIN.match(manifest["metadata"]["name"])
    assert LABEL_VALUE.match(manifest["metadata"]["labels"]["hub.jupyter.org/username"])

    container = container_of(manifest)
    assert container["image"] == expected["image"]
    assert container["resources"] == {"requests": expected["requests"], "limits": expected["limits"]}

    spec = manifest["spec"]
    if expected["node_selector"]:
        assert spec["nodeSelector"] == expected["node_selector"]
    else:
        assert not spec.get("nodeSelector")
    if slug in GPU_PROFILES:
        assert spec["tolerations"] == GPU_TOLERATIONS
    else:
        assert not spec.get("tolerations")
        assert not any(name.startswith("nvidia.com/") for name in container["resources"]["limits"])

    # The home claim always, the profile's volumes beside it (in any order).
    user_slug = USER_SLUGS[username]
    volumes = [("home", f"home-{user_slug}", "/home/jovyan", False)] + [
        (name, claim.format(slug=user_slug), path, read_only) for name, claim, path, read_only in expected["extra_volumes"]
    ]
    assert by_name(spec["volumes"]) == {
        name: {"name": name, "persistentVolumeClaim": {"claimName": claim, **({"readOnly": read_only} if name != "home" else {})}}
        for name, claim, _, read_only in volumes
    }
    assert by_name(container["volumeMounts"]) == {
        name: HOME_MOUNT if name == "home" else {"name": name, "mountPath": path, "readOnly": read_only}
        for name, _, path, read_only in volumes
    }
    for _, claim, _, _ in volumes:
        assert DNS_SUBDOMAIN.match(claim), claim

    assert container["securityContext"] == CONTAINER_SECURITY
    assert spec["securityContext"] == {"fsGroup": 100}
    assert spec["automountServiceAccountToken"] is False
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["JUPYTERHUB_USER"] == username
    assert env["MEM_LIMIT"] == str(expected["limits"]["memory"])
    for name, value in expected["env"].items():
        assert env[name] == value


def test_default_profile_is_the_users_default(catalogues):
    manifest = render_pod_manifest(catalogues["default"], "alice", ["officina"], None)
    assert container_of(manifest)["resources"]["limits"] == {"cpu": 2.0, "memory": 2 * GIB}


@pytest.mark.parametrize(
    "catalogue,groups,slug,message",
    [
        ("default", ["officina"], "gpu", "Profile '1 GPU' is reserved for members of officina/gpu; your groups: officina."),
        ("default", [], "gpu", "Profile '1 GPU' is reserved for members of officina/gpu; your groups: none."),
        ("test", ["officina"], "a100", "Profile 'Two A100' is reserved for members of officina/gpu; your groups: officina."),
        (
            "test",
            ["officina", "officina/gpu-old"],
            "mig-small",
            "Profile 'A GPU slice' is reserved for members of officina/gpu, officina/teaching; "
            "your groups: officina, officina/gpu-old.",
        ),
        ("test", ALL_GROUPS, "tpu", "Unknown profile 'tpu'."),
    ],
)
def test_a_profile_outside_the_users_groups_is_refused(catalogues, catalogue, groups, slug, message):
    with pytest.raises(ChoiceError) as refusal:
        render_pod_manifest(catalogues[catalogue], "bob", groups, slug)
    assert str(refusal.value) == message


def run_with_spawner(settings, username, groups, scenario):
    async def main():
        return await scenario(offline_spawner(settings, username, groups))

    return run_coroutine(main())


@pytest.mark.parametrize(
    "catalogue,groups,visible,default",
    [
        ("default", ["officina"], ["cpu-small", "cpu-large"], "cpu-small"),
        ("default", ["officina", "officina/gpu"], ["cpu-small", "cpu-large", "gpu"], "cpu-small"),
        ("test", ["officina"], ["cpu"], "cpu"),
        ("test", ["officina/teaching"], ["cpu", "mig-small"], "cpu"),
        ("test", ["officina/gpu"], ["cpu", "a100", "mig-small"], "cpu"),
    ],
)
def test_the_form_offers_only_the_users_profiles(catalogues, catalogue, groups, visible, default):
    async def scenario(spawner):
        profiles = spawner.profile_list(spawner)
        form = await spawner.get_options_form()
        return profiles, form

    profiles, form = run_with_spawner(catalogues[catalogue], "carol", groups, scenario)
    assert [p["slug"] for p in profiles] == visible
    assert [p["slug"] for p in profiles if p["default"]] == [default]
    offered = re.findall(r'name="profile"[^>]*value="([^"]+)"', form, re.S)
    assert offered == visible


def test_a_forged_form_is_refused_with_a_400(catalogues):
    async def scenario(spawner):
        with pytest.raises(web.HTTPError) as refusal:
            spawner.run_options_from_form({"profile": ["gpu"]})
        accepted = spawner.run_options_from_form({"profile": ["cpu-large"]})
        return refusal.value, accepted

    refusal, accepted = run_with_spawner(catalogues["default"], "bob", ["officina"], scenario)
    assert refusal.status_code == 400
    assert refusal.jupyterhub_message == "Profile '1 GPU' is reserved for members of officina/gpu; your groups: officina."
    assert accepted == {"profile": "cpu-large"}


def test_options_from_the_rest_api_are_checked_at_start(catalogues):
    """user_options can come from the REST API, or from a form submitted before the user
    lost a group: the check at start refuses them and applies nothing of the profile."""

    async def scenario(spawner):
        spawner.user_options = {"profile": "gpu"}
        with pytest.raises(web.HTTPError) as refusal:
            await spawner.load_user_options()
        return refusal.value, spawner.extra_resource_limits, spawner.image

    refusal, gpu_limits, image = run_with_spawner(catalogues["default"], "bob", ["officina"], scenario)
    assert refusal.status_code == 400
    assert refusal.jupyterhub_message == "Profile '1 GPU' is reserved for members of officina/gpu; your groups: officina."
    assert gpu_limits == {}
    assert image != "officina/notebook-gpu:0.1.0"


@pytest.mark.parametrize("memory_gb,limit", [("6", 6 * GIB), ("4", 4 * GIB), (None, 8 * GIB)])
def test_a_memory_limit_within_the_profile_range_is_applied(catalogues, memory_gb, limit):
    async def scenario(spawner):
        spawner.user_options = {"profile": "cpu-large", **({"memory_gb": memory_gb} if memory_gb else {})}
        await spawner.load_user_options()
        pod = await spawner.get_pod_manifest()
        return spawner.api.api_client.sanitize_for_serialization(pod)

    manifest = run_with_spawner(catalogues["default"], "alice", ["officina"], scenario)
    assert container_of(manifest)["resources"]["limits"]["memory"] == limit


def test_a_memory_limit_outside_the_profile_range_is_refused(catalogues):
    async def scenario(spawner):
        spawner.user_options = {"profile": "cpu-large", "memory_gb": "64"}
        with pytest.raises(web.HTTPError) as refusal:
            await spawner.load_user_options()
        return refusal.value

    refusal = run_with_spawner(catalogues["default"], "alice", ["officina"], scenario)
    assert refusal.jupyterhub_message == "Memory: 64 GB is outside what 'Large CPU' allows (4 to 8 GB)."


def test_a_profile_volume_cannot_replace_the_home(tmp_path):
    config = tmp_path / "officina.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "profiles:\n"
        "  - slug: cpu\n"
        "    display_name: CPU\n"
        "    volumes: [{name: home, mount_path: /home/jovyan, claim: shared}]\n"
    )
    # Refused when the configuration is read, before any spawner sees it.
    with pytest.raises(SettingsError, match=r"profiles\[0\]\.volumes\[0\]\.name: 'home' is reserved"):
        load_settings(config)


def test_command_line_prints_the_manifest_or_refuses(catalogues, tmp_path):
    config = tmp_path / "officina.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n{TEST_CATALOGUE}")
    command = [sys.executable, "-m", "officina.hub.kubernetes", "--config", str(config), "--user", "alice"]

    printed = subprocess.run(command + ["--groups", "officina/gpu", "--profile", "a100"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout) == render_pod_manifest(catalogues["test"], "alice", ["officina/gpu"], "a100")

    refused = subprocess.run(command + ["--groups", "officina", "--profile", "a100"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr == "error: Profile 'Two A100' is reserved for members of officina/gpu; your groups: officina.\n"


def test_a_user_without_any_profile_gets_no_pod(tmp_path):
    config = tmp_path / "officina.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "profiles:\n"
        "  - {slug: gpu, display_name: GPU, gpus: {count: 1}, groups: [officina/gpu]}\n"
    )
    with pytest.raises(ChoiceError, match=r"^No profile is available to your IAM groups on this platform\.$"):
        render_pod_manifest(load_settings(config), "dave", ["officina"], None)


def test_hub_configuration_selects_kubespawner_from_the_same_catalogue(tmp_path):
    """`sessions.spawner: kubernetes` makes the hub use OfficinaKubeSpawner with the catalogue."""
    from traitlets.config import Config

    from officina.hub.hub_config import configure
    from officina.hub.settings import load_settings
    from officina.hub.state import StateDir

    config_file = tmp_path / "officina.yaml"
    config_file.write_text(f"state_dir: {tmp_path / 'state'}\nsessions: {{spawner: kubernetes}}\n")
    settings = load_settings(config_file)
    state = StateDir(settings.state_dir)
    state.prepare(shared_homes=False)
    for name in ("iam_client_secret", "proxy_auth_token", "culler_api_token", "crypt_key"):
        state.secret(name)
    c = Config()
    configure(c, settings.raw)
    assert c.JupyterHub.spawner_class == "officina.hub.kubernetes.OfficinaKubeSpawner"
    assert [p["slug"] for p in c.OfficinaKubeSpawner.profile_catalogue] == ["cpu-small", "cpu-large", "gpu"]
    assert c.OfficinaKubeSpawner.environment["BEARER_TOKEN_FILE"] == "/home/jovyan/.officina/bearer_token"
