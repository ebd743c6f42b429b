"""The session's side of the resource manager: ask the hub for Spark clusters.

The session authenticates with its own JupyterHub token (JUPYTERHUB_API_TOKEN, which carries
`custom:officina:resources` for this user); OFFICINA_RESOURCES_URL says where the service is.
"""

from __future__ import annotations

import os
import time

import httpx


class ResourceError(RuntimeError):
    """What the resource manager refused, in its words."""


class Resources:
    def __init__(self, url: str | None = None, token: str | None = None):
        self.url = (url or os.environ.get("OFFICINA_RESOURCES_URL", "")).rstrip("/") + "/"
        if self.url == "/":
            raise ResourceError("this session has no resource manager (OFFICINA_RESOURCES_URL is unset)")
        token = token or os.environ.get("JUPYTERHUB_API_TOKEN")
        self.http = httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"token {token}"})

    def _call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                reason = response.json()["error"]
            except (ValueError, KeyError):
                reason = response.text[:200]
            raise ResourceError(f"{reason} (HTTP {response.status_code})")
        return response.json()

    def kinds(self) -> dict:
        return self._call("GET", "api/kinds")

    def list(self, kind: str | None = None) -> list[dict]:
        return [r for r in self._call("GET", "api/resources") if kind is None or r["kind"] == kind]

    def get(self, resource_id: str) -> dict:
        return self._call("GET", f"api/resources/{resource_id}")

    def create(self, kind: str, **options) -> dict:
        return self._call("POST", "api/resources", json={"kind": kind, **options})

    def scale(self, resource_id: str, workers: int) -> dict:
        return self._call("PATCH", f"api/resources/{resource_id}", json={"workers": workers})

    def delete(self, resource_id: str) -> dict:
        return self._call("DELETE", f"api/resources/{resource_id}")

    def wait_running(self, resource_id: str, timeout: float = 300, update=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(resource_id)
            if update is not None:
                update(record)
            if record["phase"] == "running":
                return record
            if record["phase"] in ("failed", "stopped"):
                raise ResourceError(f"{record['kind']} {resource_id} {record['phase']}: {record['message']}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{record['kind']} {resource_id} not running within {timeout:g} s")
            time.sleep(0.5)


def create_running(kind: str, workers: int | None, timeout: float, **options) -> dict:
    """Ask the manager for a resource of `kind` and wait, with a progress bar, until it runs;
    its record. Refusals (quota, options) raise ResourceError in the manager's words."""
    from .clusters import _progress

    manager = Resources()
    request = dict(options)
    if workers is not None:
        request["workers"] = workers
    record = manager.create(kind, **request)
    update = _progress(record["workers"] or 1)
    record = manager.wait_running(record["id"], timeout, lambda r: update(0))
    update(record["workers"])
    return record


def spark(workers: int | None = None, timeout: float = 300, **options):
    """A Spark standalone cluster of your own, started by the hub, and a SparkSession on it.

    `workers=N`, and options from the platform's declaration (`worker_cores`, `worker_memory`
    in GiB). The cluster outlives the kernel: `spark_clusters()` lists it, `stop_spark(id)`
    stops it, and it stops by itself after the idle timeout when it runs no application.
    """
    record = create_running("spark", workers, timeout, **options)
    session = session_on(record)
    session.officina_cluster = record  # the id, the UI link
    return session


def cluster_secret(record: dict) -> str | None:
    """The cluster's shared secret: from its configuration file (readable by this account
    only) on one machine, from the resource manager (owner only) where the cluster is pods."""
    conf = record["endpoints"].get("conf")
    if not conf:
        try:
            return Resources()._call("GET", f"api/resources/{record['id']}/secret")["secret"]
        except ResourceError:
            return None
    with open(conf) as handle:
        for line in handle:
            key, _, value = line.strip().partition(" ")
            if key == "spark.authenticate.secret":
                return value.strip()
    return None


def session_on(record: dict, **conf):
    """A SparkSession on one of your clusters (a record from spark_clusters()).

    Its application UI (jobs, stages, SQL) is reached through the cluster's UI on the hub, as
    the master reverse-proxies it: `session.officina_app_ui`, for you only."""
    from urllib.parse import urlsplit

    from .spark import spark_session

    ui = record["endpoints"].get("ui")
    if ui:
        # The driver's pages then link under the master's proxy, which is under the hub's route.
        conf = {"spark.ui.reverseProxy": "true", "spark.ui.reverseProxyUrl": urlsplit(ui).path.rstrip("/"), **conf}
    session = spark_session(record["endpoints"]["master"], app_name=f"officina-{record['id']}",
                            secret=cluster_secret(record), ui=record["endpoints"].get("ui_local"), **conf)
    if ui:
        session.officina_app_ui = f"{ui.rstrip('/')}/proxy/{session.sparkContext.applicationId}/"
    return session


def spark_clusters() -> list[dict]:
    return Resources().list("spark")


def stop_spark(resource_id: str) -> dict:
    return Resources().delete(resource_id)
