"""The proxy as JupyterHub sees it when Officina's supervisor runs configurable-http-proxy.

The supervisor owns the proxy process (so `officina status` sees it and a crash is restarted
independently of the hub). A freshly restarted proxy has no routes; JupyterHub only re-checks
routes periodically for a proxy it started itself. So the hub "starts" this proxy by waiting
for the supervisor's one to answer and then keeps its routes in sync on a timer, and "stops"
it without touching the process.
"""

from __future__ import annotations

import asyncio

from jupyterhub.proxy import ConfigurableHTTPProxy
from tornado.ioloop import PeriodicCallback
from traitlets import Integer


class SupervisedProxy(ConfigurableHTTPProxy):
    route_sync_interval = Integer(
        5, config=True, help="Seconds between checks that the proxy still has every route."
    )

    _sync_callback = None

    async def start(self):
        for _ in range(100):
            try:
                await self.get_all_routes()
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"the proxy API at {self.api_url} does not answer")
        self._sync_callback = PeriodicCallback(self._sync_routes, 1e3 * self.route_sync_interval)
        self._sync_callback.start()

    async def _sync_routes(self):
        try:
            await self.check_routes(self.app.users, self.app._service_map)
        except Exception as exc:  # the proxy may be restarting; the next round catches up
            self.log.warning("route sync with the proxy failed: %s", exc)

    def stop(self):
        if self._sync_callback is not None:
            self._sync_callback.stop()

    async def check_running(self):
        """The supervisor restarts a dead proxy; the hub must never start a second one."""
