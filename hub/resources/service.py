"""The resource manager's HTTP side: a JupyterHub-managed service at /services/resources/.

API (JSON; `Authorization: token <JupyterHub token>` with `custom:officina:resources` for the
user, which the server and user roles carry):

    GET    api/kinds                 the kinds and their options (JSON schema, declared once)
    GET    api/resources             your resources
    POST   api/resources             {"kind": "spark", "workers": 2, "worker_cores": 1, ...} -> 202
    GET    api/resources/<id>
    PATCH  api/resources/<id>        {"workers": 3}
    DELETE api/resources/<id>
    GET    api/models                model servers you may call (any token of yours)
    GET    api/apps                  published Voila apps you may open (any token of yours)

and, behind the hub's login: ui/<id>/ (a Spark UI, owner only), models/<id>/ (a model server's
API) and apps/<id>/ (a published Voila app), for the owner and the groups they shared it with.

Every refusal is a 4xx with {"error": "<what is wrong>"}; an error of ours is a 500 with a
generic message (the details go to the log, never secrets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from ..lifetime import watch_parent

from .contract import Phase, Resource
from .kinds import OptionError, QuotaError
from .manager import Conflict, Engine, NotFound

log = logging.getLogger("officina.resources")

SCOPE = "custom:officina:resources"
SCOPE_DESCRIPTION = "Create, scale, list and delete your own Spark clusters and other resources."


class ApiHandler(HubOAuthenticated, web.RequestHandler):
    def initialize(self, engine: Engine):
        self.engine = engine

    def check_xsrf_cookie(self):
        # Token-authenticated API: no cookies are accepted for writes (see get_current_user).
        return

    def get_current_user(self):
        if not self.request.headers.get("Authorization"):
            return None  # API calls carry a token; a browser cookie is not enough to act
        return super().get_current_user()

    def user(self) -> dict:
        model = self.current_user
        if model is None:
            if self.request.headers.get("Authorization"):
                raise web.HTTPError(403, f"this token is not accepted here: it needs the {SCOPE} scope "
                                         "and access to the resources service")
            raise web.HTTPError(401, "a JupyterHub token is needed (Authorization: token ...)")
        scopes = set(model.get("scopes", ()))
        if model.get("kind") != "user" or not ({SCOPE, f"{SCOPE}!user={model['name']}"} & scopes):
            raise web.HTTPError(403, f"this token lacks the {SCOPE} scope for its user")
        return model

    def caller(self) -> dict:
        """The user a token belongs to, whatever its scopes (for read-only listings)."""
        model = self.current_user
        if model is None or model.get("kind") != "user":
            if self.request.headers.get("Authorization"):
                raise web.HTTPError(403, "this token is not a user's token accepted here")
            raise web.HTTPError(401, "a JupyterHub token is needed (Authorization: token ...)")
        return model

    def body(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return data

    def send(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        elif status_code >= 500:
            message = "the resource manager failed; the administrators can see why in its log"
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    async def guarded(self, action):
        try:
            return await action
        except (OptionError, web.HTTPError) as exc:
            if isinstance(exc, web.HTTPError):
                raise
            raise web.HTTPError(400, str(exc)) from None
        except QuotaError as exc:
            raise web.HTTPError(403, str(exc)) from None
        except NotFound as exc:
            raise web.HTTPError(404, str(exc)) from None
        except Conflict as exc:
            raise web.HTTPError(409, str(exc)) from None


def public(resource: Resource, base_url: str) -> dict:
    """What a user sees of a record (not the backend's private state)."""
    data = resource.to_json()
    state = data.pop("state")
    endpoints = dict(data["endpoints"])
    if endpoints.get("ui"):
        # Through the hub's proxy, behind the login; the loopback address is for the owner's
        # own driver (sizing executors).
        endpoints["ui_local"] = endpoints["ui"]
        endpoints["ui"] = url_path_join(base_url, "ui", resource.id) + "/"
    if resource.kind == "model" and endpoints.get("api"):
        # Callers (the owner, the groups it is shared with) go through the hub's proxy.
        endpoints["api"] = url_path_join(base_url, "models", resource.id) + "/"
    if resource.kind == "app" and endpoints.get("app"):
        endpoints["app"] = url_path_join(base_url, "apps", resource.id) + "/"
    if state.get("workdir") and resource.kind == "spark":
        # The cluster's shared secret stays in a file only the owner's account can read.
        endpoints["conf"] = str(Path(state["workdir"]) / "conf" / "spark-defaults.conf")
    data["endpoints"] = endpoints
    return data


class KindsHandler(ApiHandler):
    def get(self):
        self.user()
        self.send({kind: spec.schema() for kind, spec in self.engine.kinds.items()})


class ResourcesHandler(ApiHandler):
    def get(self):
        user = self.user()
        self.send([public(r, self.settings["public_base"]) for r in self.engine.list(user["name"])])

    async def post(self):
        user = self.user()
        body = self.body()
        kind = body.get("kind")
        if not isinstance(kind, str):
            raise web.HTTPError(400, f"kind: one of {', '.join(sorted(self.engine.kinds))} is needed")
        resource = await self.guarded(self.engine.create(user["name"], user.get("groups", []), kind, body))
        self.send(public(resource, self.settings["public_base"]), 202)


class ResourceHandler(ApiHandler):
    def get(self, resource_id):
        user = self.user()
        try:
            resource = self.engine.get(user["name"], resource_id)
        except NotFound as exc:
            raise web.HTTPError(404, str(exc)) from None
        self.send(public(resource, self.settings["public_base"]))

    async def patch(self, resource_id):
        user = self.user()
        body = self.body()
        if "workers" not in body or set(body) - {"workers"}:
            raise web.HTTPError(400, "only {\"workers\": N} can be changed")
        resource = await self.guarded(self.engine.scale(user["name"], user.get("groups", []), resource_id, body["workers"]))
        self.send(public(resource, self.settings["public_base"]))

    async def delete(self, resource_id):
        user = self.user()
        resource = await self.guarded(self.engine.delete(user["name"], resource_id))
        self.send(public(resource, self.settings["public_base"]))


class ModelsHandler(ApiHandler):
    """The model servers this user may call: their own and those shared with a group of theirs
    (what a Voila app for basic users offers to choose from). Read-only, so any token of the
    user will do: a published app's kernel holds one that may do nothing else (app_local)."""

    def get(self):
        user = self.caller()
        groups = set(user.get("groups") or ())
        base = self.settings["public_base"]
        self.send([
            {"id": r.id, "owner": r.owner, "model": r.endpoints.get("model"), "shared_with": r.options.get("share_with", []),
             "api": url_path_join(base, "models", r.id) + "/"}
            for r in self.engine.resources.values()
            if r.kind == "model" and r.phase == Phase.RUNNING
            and (r.owner == user["name"] or groups & set(r.options.get("share_with") or ()))
        ])


class AppsHandler(ApiHandler):
    """The published apps this user may open: their own and those published to a group of theirs."""

    def get(self):
        user = self.caller()
        groups = set(user.get("groups") or ())
        base = self.settings["public_base"]
        self.send([
            {"id": r.id, "owner": r.owner, "notebook": r.options.get("notebook"),
             "shared_with": r.options.get("share_with", []), "url": url_path_join(base, "apps", r.id) + "/"}
            for r in self.engine.resources.values()
            if r.kind == "app" and r.phase == Phase.RUNNING
            and (r.owner == user["name"] or groups & set(r.options.get("share_with") or ()))
        ])


class SecretHandler(ApiHandler):
    """A Spark cluster's shared secret, for its owner's driver, where no file of theirs holds it
    (pods on Kubernetes); on one machine it stays in the owner's 0600 file (`endpoints.conf`)."""

    def get(self, resource_id):
        user = self.user()
        try:
            resource = self.engine.get(user["name"], resource_id)
        except NotFound as exc:
            raise web.HTTPError(404, str(exc)) from None
        state = resource.state or {}
        if resource.kind != "spark" or state.get("workdir") or not state.get("secret"):
            raise web.HTTPError(404, f"{resource.kind} {resource_id} has no secret to give out here")
        self.set_header("Cache-Control", "no-store")
        self.send({"secret": state["secret"]})


def make_app(engine: Engine, prefix: str, public_base: str) -> web.Application:
    from .ui_proxy import AppProxy, ModelProxy, ResourceUIProxy

    api = url_path_join(prefix, "api")
    hub_auth = HubOAuth(access_scopes=set(), cache_max_age=60)  # scopes are checked per handler
    return web.Application(
        [
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(api, "kinds"), KindsHandler, {"engine": engine}),
            (url_path_join(api, "resources"), ResourcesHandler, {"engine": engine}),
            (url_path_join(api, "models"), ModelsHandler, {"engine": engine}),
            (url_path_join(api, "apps"), AppsHandler, {"engine": engine}),
            (url_path_join(api, "resources", r"([0-9a-f]+)"), ResourceHandler, {"engine": engine}),
            (url_path_join(api, "resources", r"([0-9a-f]+)", "secret"), SecretHandler, {"engine": engine}),
            (url_path_join(prefix, "ui", r"([0-9a-f]+)") + r"(?:/(.*))?", ResourceUIProxy, {"engine": engine}),
            (url_path_join(prefix, "models", r"([0-9a-f]+)") + r"(?:/(.*))?", ModelProxy, {"engine": engine}),
            (url_path_join(prefix, "apps", r"([0-9a-f]+)") + r"(?:/(.*))?", AppProxy, {"engine": engine}),
        ],
        hub_auth=hub_auth,
        cookie_secret=os.urandom(32),
        public_base=public_base,
        websocket_ping_interval=30,
    )


async def serve(engine: Engine, check_every: float = 10) -> None:
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    bind = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    public_base = os.environ.get("OFFICINA_RESOURCES_PUBLIC", prefix)
    await engine.recover()
    app = make_app(engine, prefix, public_base)
    server = app.listen(bind.port, address=bind.hostname or "127.0.0.1")
    log.info("Resource manager at %s on %s; kinds: %s", prefix, bind.netloc, ", ".join(engine.kinds))
    # SIGINT/SIGTERM is the platform stopping (`officina down`, the hub shutting down): like
    # dask-gateway, stop every resource, so nothing is left running. A crash (or SIGKILL)
    # leaves them to be found again by the next start (recover()).
    stopping = asyncio.Event()
    orphaned = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # JupyterHub stops its services with SIGINT first
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    # The hub died without stopping us (a crash): leave the resources to the next manager the
    # restarted hub starts (it recovers them), and go.
    watcher = asyncio.ensure_future(watch_parent(lambda: (orphaned.set(), stopping.set())))
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), check_every)
        except asyncio.TimeoutError:
            pass
        else:
            break
        try:
            await engine.check()
        except Exception:  # noqa: BLE001 - housekeeping must go on; the reason is logged
            log.exception("Resource check failed")
    server.stop()
    watcher.cancel()
    if orphaned.is_set():
        log.info("The hub is gone: leaving the resources running for the next manager")
        return
    log.info("Stopping every resource: the platform is stopping")
    await engine.stop_all("the platform stopped")


def main() -> None:
    from .setup import engine_from_settings

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s resources] %(message)s")
    with open(os.environ["OFFICINA_SETTINGS"]) as handle:
        raw = json.load(handle)
    engine = engine_from_settings(raw)
    asyncio.run(serve(engine, float(os.environ.get("OFFICINA_RESOURCES_CHECK_EVERY", "10"))))


if __name__ == "__main__":
    main()


