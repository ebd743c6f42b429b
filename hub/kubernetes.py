"""Sessions on Kubernetes: KubeSpawner driven by the same profile catalogue as the local spawner.

The catalogue (officina.yaml `profiles`) becomes KubeSpawner's `profile_list`, evaluated per
user so each user is offered only the profiles their IAM groups allow. The submitted choice is
checked again with `Catalogue.choose` before KubeSpawner applies it: the form is a convenience,
and the REST API accepts any `user_options`.

`render_pod_manifest` builds, without any Kubernetes API server, the pod KubeSpawner would
create for a user and profile, through the same code path as a real start.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import yaml
from jupyterhub.objects import Hub
from kubespawner import KubeSpawner
from tornado import web
from traitlets import Dict, List, default
from traitlets.config import Config

from .profiles import Catalogue, ChoiceError, Profile

HOME_VOLUME = "home"
HOME_MOUNT_PATH = "/home/jovyan"
# Labels set by the NVIDIA GPU operator's feature discovery on every GPU node.
GPU_MODEL_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
# The uid and gid of `jovyan` in the Jupyter docker-stacks images the profiles run.
SESSION_UID = 1000
SESSION_GID = 100


def gpu_resources(profile: Profile) -> dict[str, str]:
    """Extended resources of a GPU profile: whole GPUs, or MIG slices (the operator's `mixed`
    strategy names each MIG profile as its own resource)."""
    if not profile.needs_gpu:
        return {}
    resource = f"nvidia.com/mig-{profile.gpu_mig}" if profile.gpu_mig else GPU_RESOURCE
    return {resource: str(profile.gpu_count)}


def kubespawner_override(profile: Profile) -> dict:
    """The KubeSpawner traits one profile sets. Dicts merge into the spawner's base values
    (so the home volume and the platform's environment stay), everything else replaces."""
    volumes, volume_mounts = {}, {}
    for volume in profile.volumes:
        if volume["name"] == HOME_VOLUME:
            raise ValueError(
                f"profile {profile.slug!r}: volume name {HOME_VOLUME!r} is reserved for the user's home volume"
            )
        # `{username}` is left for KubeSpawner to expand with the same safe slug as pod names.
        volumes[volume["name"]] = {
            "name": volume["name"],
            "persistentVolumeClaim": {"claimName": volume["claim"], "readOnly": volume["read_only"]},
        }
        volume_mounts[volume["name"]] = {
            "name": volume["name"],
            "mountPath": volume["mount_path"],
            "readOnly": volume["read_only"],
        }
    override = {
        "image": profile.image,
        "cpu_guarantee": profile.cpu_guarantee,
        "cpu_limit": profile.cpu_limit,
        "mem_guarantee": profile.mem_guarantee,
        "mem_limit": profile.mem_limit,
        "environment": dict(profile.env),
        "volumes": volumes,
        "volume_mounts": volume_mounts,
    }
    if profile.needs_gpu:
        override["extra_resource_guarantees"] = gpu_resources(profile)
        override["extra_resource_limits"] = gpu_resources(profile)
        # GPU nodes are tainted so that CPU sessions never take their place.
        override["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        if profile.gpu_model:
            override["node_selector"] = {GPU_MODEL_LABEL: profile.gpu_model}
    return override


def kubespawner_profiles(catalogue: Catalogue, groups) -> list[dict]:
    """KubeSpawner's `profile_list` for a user in `groups`: only the profiles they may use,
    with the catalogue's default for them as the one default."""
    default_profile = catalogue.default_for(groups)
    return [
        {
            "slug": profile.slug,
            "display_name": profile.display_name,
            "description": f"{profile.description} ({profile.summary})" if profile.description else profile.summary,
            "default": profile is default_profile,
            "kubespawner_override": kubespawner_override(profile),
        }
        for profile in catalogue.visible(groups)
    ]


def _refusal(error: ChoiceError) -> web.HTTPError:
    """A 400 whose message JupyterHub shows as is on the spawn form."""
    refusal = web.HTTPError(400, str(error))
    refusal.jupyterhub_message = str(error)
    return refusal


class OfficinaKubeSpawner(KubeSpawner):
    """KubeSpawner offering each user the catalogue profiles their IAM groups allow."""

    profile_catalogue = List(
        Dict(),
        config=True,
        help="The profile catalogue: the `profiles` entries of officina.yaml, defaults filled in.",
    )

    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.profile_catalogue)

    @property
    def iam_groups(self) -> list[str]:
        return [group.name for group in self.user.groups]

    @default("profile_list")
    def _profile_list_from_catalogue(self):
        # A callable, so KubeSpawner evaluates it for each user when it renders the form and
        # again when it applies the choice at start.
        return lambda spawner: kubespawner_profiles(spawner.catalogue, spawner.iam_groups)

    # The home volume: KubeSpawner creates the claim on first start and mounts it always;
    # profiles add their volumes next to it (dicts merge).
    @default("pvc_name_template")
    def _home_claim_name(self):
        return "home-{username}"

    @default("storage_pvc_ensure")
    def _create_home_claim(self):
        return True

    @default("storage_capacity")
    def _home_capacity(self):
        return "10Gi"

    @default("delete_pvc")
    def _keep_home_claim(self):
        # The claim is per user, shared by all their servers: deleting one named server
        # must not delete the user's home.
        return False

    @default("volumes")
    def _home_volume(self):
        return {HOME_VOLUME: {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}}

    @default("volume_mounts")
    def _home_volume_mount(self):
        return {HOME_VOLUME: {"name": HOME_VOLUME, "mountPath": HOME_MOUNT_PATH}}

    # Sessions run as the image's unprivileged user and pass the "restricted" Pod Security
    # Standard.
    @default("uid")
    def _session_uid(self):
        return SESSION_UID

    @default("gid")
    def _session_gid(self):
        return SESSION_GID

    @default("fs_gid")
    def _home_group(self):
        # Volumes are group-owned by jovyan's group so the session can write its home.
        return SESSION_GID

    @default("container_security_context")
    def _restricted_security_context(self):
        return {
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def _options_from_form(self, formdata):
        """Refuse a forged or stale form before JupyterHub stores it as user_options."""
        try:
            self.catalogue.choose(formdata, self.iam_groups)
        except ChoiceError as error:
            raise _refusal(error) from None
        return super()._options_from_form(formdata)

    async def load_user_options(self):
        """Check user_options (from the form or the REST API) against the catalogue and the
        user's groups as they are now, then let KubeSpawner apply the profile."""
        # KubeSpawner reads an empty profile as "the default"; so does Catalogue.choose a missing one.
        submitted = {
            key: [value]
            for key, value in (self.user_options or {}).items()
            if key in ("profile", "memory_gb") and value not in (None, "")
        }
        try:
            selection = self.catalogue.choose(submitted, self.iam_groups)
        except ChoiceError as error:
            raise _refusal(error) from None
        await super().load_user_options()
        # A memory limit asked for within the profile's range (REST API) replaces the profile's.
        self.mem_limit = selection.mem_limit


# A kubeconfig that only satisfies KubeSpawner's client set-up; the .invalid domain never
# resolves, so nothing can be contacted by mistake.
_OFFLINE_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "offline", "cluster": {"server": "https://kubernetes.invalid"}}],
    "users": [{"name": "offline", "user": {"token": "offline"}}],
    "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
    "current-context": "offline",
}


def kubespawner_config(settings) -> Config:
    """The JupyterHub configuration that makes KubeSpawner serve the catalogue."""
    # Build every profile once now, so that a profile Kubernetes cannot run stops the hub at
    # start rather than a user's spawn.
    for profile in Catalogue(settings["profiles"]).profiles:
        kubespawner_override(profile)
    c = Config()
    c.JupyterHub.spawner_class = "officina.hub.kubernetes.OfficinaKubeSpawner"
    c.OfficinaKubeSpawner.profile_catalogue = settings["profiles"]
    return c


def offline_spawner(settings, username: str, groups: list[str]) -> OfficinaKubeSpawner:
    """The spawner the hub would make for `username` in `groups`, with no hub database and
    no API server (KubeSpawner's own test mode). Call it inside a running event loop:
    KubeSpawner creates its API client there."""
    base_url = settings["hub"]["base_url"]
    user = SimpleNamespace(
        name=username,
        id=1,
        url=f"{base_url}user/{username}/",
        groups=[SimpleNamespace(name=group) for group in groups],
    )
    # The hub as sessions reach it inside the cluster: the Service name and port the
    # JupyterHub Helm chart gives it. Fixed, so that a render is reproducible.
    hub = Hub(ip="hub", port=8081, base_url=f"{base_url}hub/")
    with tempfile.TemporaryDirectory(prefix="officina-kubeconfig-") as folder:
        kubeconfig = Path(folder) / "config"
        kubeconfig.write_text(yaml.safe_dump(_OFFLINE_KUBECONFIG))
        # KubeSpawner loads the client configuration when it is created; point it at the
        # placeholder rather than at whatever cluster the operator's own kubeconfig names.
        with mock.patch("kubernetes_asyncio.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)):
            return OfficinaKubeSpawner(config=kubespawner_config(settings), user=user, hub=hub, _mock=True)


async def _render(settings, username: str, groups: list[str], profile_slug: str | None) -> dict:
    spawner = offline_spawner(settings, username, groups)
    spawner.user_options = {"profile": profile_slug} if profile_slug else {}
    # What KubeSpawner does at start before it creates the pod.
    try:
        await spawner.load_user_options()
    except web.HTTPError as refusal:
        raise ChoiceError(refusal.jupyterhub_message) from None
    pod = await spawner.get_pod_manifest()
    return spawner.api.api_client.sanitize_for_serialization(pod)


def run_coroutine(coroutine):
    """asyncio.run, also from a thread whose event loop is already running (a notebook, or
    a caller using Playwright's sync API): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def render_pod_manifest(settings, username: str, groups: list[str], profile_slug: str | None) -> dict:
    """The pod manifest KubeSpawner would create for `username` in `groups` starting
    `profile_slug` (None: the user's default profile), rendered offline: no pod runs.

    Raises ChoiceError, with the message the spawn form would show, if the user may not use
    that profile."""
    return run_coroutine(_render(settings, username, groups, profile_slug))


def main(argv: list[str] | None = None) -> int:
    from .settings import SettingsError, load_settings

    parser = argparse.ArgumentParser(
        prog="python -m officina.hub.kubernetes",
        description="Print the pod manifest KubeSpawner would create for a user and profile, or with --dask "
        "what a Dask cluster of the user becomes (offline; nothing is started).",
    )
    parser.add_argument("--config", help="officina.yaml (default: the embedded defaults)")
    parser.add_argument("--user", required=True, help="hub username")
    parser.add_argument("--groups", nargs="*", action="extend", default=[], help="the user's IAM groups")
    parser.add_argument("--profile", help="profile slug (default: the user's default profile)")
    parser.add_argument(
        "--dask",
        action="store_true",
        help="print instead the objects of a sample Dask cluster of the user: the DaskCluster the gateway "
        "creates, then the controller's Secret (a throwaway key pair), scheduler Pod and Service, one worker Pod",
    )
    args = parser.parse_args(argv)
    if args.dask and args.profile:
        parser.error("--profile chooses a session; Dask clusters run the catalogue's default CPU image")
    try:
        settings = load_settings(args.config)
        if args.dask:
            from .dask_gateway_kubernetes import render_cluster_manifests

            manifests = list(render_cluster_manifests(settings, args.user, args.groups).values())
        else:
            manifests = [render_pod_manifest(settings, args.user, args.groups, args.profile)]
    except (SettingsError, ChoiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    yaml.safe_dump_all(manifests, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
