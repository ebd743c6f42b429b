"""A resource's web UI (the Spark master UI) through the hub's proxy, for its owner only.

The same authenticated pass-through as the Dask dashboards (dask_dashboards.DashboardProxy),
with the owner and address taken from the resource manager's records.
"""

from __future__ import annotations

from tornado import web

from ..dask_dashboards import DashboardProxy
from .contract import Phase


class ResourceUIProxy(DashboardProxy):
    """Unlike schedulers, Spark's UI serves at its root: the prefix is taken off on the way in
    and put back on its redirects (its links carry it already: spark.ui.reverseProxyUrl)."""

    def initialize(self, engine):
        self.engine = engine
        self.upstream_ws = None

    def _url(self, base: str) -> str:
        path = self.request.uri[len(self.location_prefix):] or "/"
        return base.rstrip("/") + (path if path.startswith("/") else "/" + path)

    def _target(self, resource_id: str) -> str:
        user = self.current_user
        resource = self.engine.resources.get(resource_id)
        if resource is None or resource.owner != user["name"] or resource.phase != Phase.RUNNING \
                or not resource.endpoints.get("ui"):
            raise web.HTTPError(404, f"You have no running resource {resource_id} with a web UI.")
        self.engine.touch(resource)
        self.location_prefix = self.request.uri.split(f"/ui/{resource_id}", 1)[0] + f"/ui/{resource_id}"
        return resource.endpoints["ui"]


class ModelProxy(ResourceUIProxy):
    """A model server's API (DEEPaaS: /v2/models/..., /swagger.json) through the hub's proxy,
    for its owner and the members of the groups they shared it with (`share_with`).

    Others get a 403 that says so; an absent server a 404. Every call counts as use (the idle
    stop leaves a server alone while people call it)."""

    def _target(self, resource_id: str) -> str:
        user = self.current_user
        resource = self.engine.resources.get(resource_id)
        if resource is None or resource.kind != "model" or resource.phase != Phase.RUNNING:
            raise web.HTTPError(404, f"There is no running model server {resource_id}.")
        shared = set(resource.options.get("share_with") or ()) & set(user.get("groups") or ())
        if resource.owner != user["name"] and not shared:
            raise web.HTTPError(403, f"Model server {resource_id} is {resource.owner}'s and not shared with "
                                     "any group of yours.")
        self.engine.touch(resource)
        self.location_prefix = self.request.uri.split(f"/models/{resource_id}", 1)[0] + f"/models/{resource_id}"
        return resource.endpoints["api"]


class AppProxy(ResourceUIProxy):
    """A published Voila app (pages, static files, its kernel's websocket) through the hub's
    proxy, for its owner and the members of the groups it is published to.

    Voila serves under the app's full public path, so requests pass through unchanged; the
    proxy adds Voila's own token, which only it knows (see app_local)."""

    def _target(self, resource_id: str) -> str:
        user = self.current_user
        resource = self.engine.resources.get(resource_id)
        if resource is None or resource.kind != "app" or resource.phase != Phase.RUNNING:
            raise web.HTTPError(404, f"There is no published app {resource_id}.")
        shared = set(resource.options.get("share_with") or ()) & set(user.get("groups") or ())
        if resource.owner != user["name"] and not shared:
            raise web.HTTPError(403, f"App {resource_id} is published by {resource.owner} to "
                                     f"{', '.join(resource.options.get('share_with') or ()) or 'nobody else'}, "
                                     "not to any group of yours.")
        self.engine.touch(resource)
        self.location_prefix = ""
        self._upstream_auth = self.engine.backends["app"].upstream_headers(resource)
        return resource.state["upstream"]

    def _upstream_headers(self) -> dict:
        return getattr(self, "_upstream_auth", {})
