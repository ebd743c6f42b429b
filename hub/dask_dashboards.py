"""Dask dashboards behind the JupyterHub login: the `dask-dashboards` hub service.

dask-gateway publishes each cluster's dashboard on its proxy at /clusters/<name>/ with no
authentication: anyone who learns a cluster's name can watch (and through Bokeh's websocket,
poke at) another user's work. Officina's gateway backend does not publish those routes
(see OfficinaLocalBackend._check_cluster_proxied); this service serves them instead, at
<hub>/services/dask-dashboards/clusters/<name>/..., only to the user who owns the cluster.

It is a JupyterHub-managed service (the hub starts it and gives it its OAuth client). Who
owns which cluster, and where its dashboard listens, comes from the gateway's own database,
read-only. Each scheduler serves its dashboard under that same full path
(`--dashboard-prefix`), so pages and websockets pass through unchanged.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import httpclient, ioloop, web, websocket

from .lifetime import watch_parent

log = logging.getLogger("officina.dask-dashboards")

RUNNING = 3  # dask_gateway_server.backends.db_base.JobStatus.RUNNING, as stored in its table
# Headers that belong to one hop, or to the hub (its login cookie never reaches a scheduler).
DROPPED_REQUEST_HEADERS = {"host", "cookie", "authorization", "connection", "upgrade", "keep-alive",
                           "transfer-encoding", "te", "proxy-authorization", "content-length"}
# (The body is passed on as it came, so its Content-Encoding stays with it.)
DROPPED_RESPONSE_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "set-cookie"}


class ClusterDirectory:
    """Cluster name → (owner, dashboard address), from the gateway's database."""

    def __init__(self, db_path: str):
        self.db_path = db_path

    def lookup(self, name: str) -> tuple[str, str] | None:
        if not os.path.exists(self.db_path):
            return None
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(
                "SELECT username, dashboard_address FROM clusters WHERE name = ? AND status = ?",
                (name, RUNNING),
            ).fetchone()
        if row is None or not row[1]:
            return None
        return row[0], row[1]


class DashboardProxy(HubOAuthenticated, websocket.WebSocketHandler):
    """HTTP and websocket traffic to one of the user's own cluster dashboards."""

    SUPPORTED_METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")
    location_prefix = ""  # what precedes upstream paths in the user's URLs (schedulers: nothing)

    def initialize(self, directory: ClusterDirectory):
        self.directory = directory
        self.upstream_ws = None

    def _target(self, cluster_name: str) -> str:
        """The dashboard's base URL, or an HTTP error the same for 'absent' and 'not yours'."""
        user = self.current_user
        found = self.directory.lookup(cluster_name)
        if found is None or found[0] != user["name"]:
            if found is not None:
                log.warning("%s asked for the dashboard of %s's cluster %s", user["name"], found[0], cluster_name)
            raise web.HTTPError(404, f"You have no running Dask cluster named {cluster_name}.")
        return found[1]

    def _url(self, base: str) -> str:
        return base.rstrip("/") + self.request.uri

    def _upstream_headers(self) -> dict:
        """Headers of our own for the upstream (its credentials, where it has some)."""
        return {}

    @web.authenticated
    async def get(self, cluster_name: str, rest: str = ""):
        base = self._target(cluster_name)
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            self.upstream_url = "ws" + self._url(base)[len("http"):]
            return await super().get(cluster_name, rest)
        await self._forward(base)

    @web.authenticated
    async def post(self, cluster_name: str, rest: str = ""):
        await self._forward(self._target(cluster_name))

    head = put = delete = options = patch = post

    async def _forward(self, base: str) -> None:
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in DROPPED_REQUEST_HEADERS}
        headers.update(self._upstream_headers())
        body = self.request.body if self.request.method in ("POST", "PUT", "PATCH") else None
        request = httpclient.HTTPRequest(
            self._url(base), method=self.request.method, headers=headers, body=body,
            follow_redirects=False, request_timeout=60, decompress_response=False,
            allow_nonstandard_methods=True,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as exc:
            raise web.HTTPError(502, f"The cluster's dashboard does not answer ({exc.strerror or exc}).") from None
        if response.code == 599:
            raise web.HTTPError(502, "The cluster's dashboard does not answer.")
        self.set_status(response.code, response.reason)
        for name in ("Content-Type", "Server"):
            self.clear_header(name)  # tornado's defaults: upstream's own come below
        for name, value in response.headers.get_all():
            if name.lower() in DROPPED_RESPONSE_HEADERS:
                continue
            if name.lower() == "location" and value.startswith(base.rstrip("/")):
                # An absolute redirect to the upstream itself: back to the path the user sees.
                value = self.location_prefix + value[len(base.rstrip("/")):]
            self.add_header(name, value)
        if self.request.method != "HEAD" and response.body:
            self.write(response.body)
        await self.finish()

    # --- websockets (Bokeh's live plots) ---

    async def open(self, cluster_name: str, rest: str = ""):
        try:
            self.upstream_ws = await websocket.websocket_connect(
                httpclient.HTTPRequest(self.upstream_url, headers=self._upstream_headers(), request_timeout=30),
                on_message_callback=self._from_upstream,
                subprotocols=self._requested_subprotocols(),
            )
        except Exception as exc:  # the scheduler went away between lookup and connect
            log.info("Dashboard websocket to %s failed: %s", self.upstream_url, exc)
            self.close(1011, "The cluster's dashboard does not answer.")

    def _requested_subprotocols(self):
        value = self.request.headers.get("Sec-WebSocket-Protocol")
        return [p.strip() for p in value.split(",")] if value else None

    def select_subprotocol(self, subprotocols):
        return subprotocols[0] if subprotocols else None

    def _from_upstream(self, message):
        if message is None:
            if self.ws_connection is not None:
                self.close()
            return
        if self.ws_connection is not None:
            self.write_message(message, binary=isinstance(message, bytes))

    async def on_message(self, message):
        if self.upstream_ws is not None:
            await self.upstream_ws.write_message(message, binary=isinstance(message, bytes))

    def on_close(self):
        if self.upstream_ws is not None:
            self.upstream_ws.close()
            self.upstream_ws = None

    def check_origin(self, origin: str) -> bool:
        # Same-origin only: a page elsewhere must not ride the user's hub cookie.
        return urlsplit(origin).netloc == self.request.host

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {message}\n")


def make_app(prefix: str, db_path: str) -> web.Application:
    directory = ClusterDirectory(db_path)
    name = r"([a-zA-Z0-9_-]+)"
    return web.Application(
        [
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(prefix, "clusters", name) + r"(?:/(.*))?", DashboardProxy, {"directory": directory}),
        ],
        cookie_secret=os.urandom(32),
        websocket_ping_interval=30,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s dask-dashboards] %(message)s")
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    bind = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    app = make_app(prefix, os.environ["OFFICINA_DASK_DB"])
    app.listen(bind.port, address=bind.hostname or "127.0.0.1", xheaders=True)
    log.info("Serving cluster dashboards at %s on %s", prefix, bind.netloc)
    loop = ioloop.IOLoop.current()
    # A service of the hub's: it goes when the hub goes, however the hub ends.
    loop.spawn_callback(watch_parent, loop.stop)
    loop.start()


if __name__ == "__main__":
    main()

