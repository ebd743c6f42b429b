"""REST API of the session extension, under `<server base url>/officina/api/`."""

from __future__ import annotations

import json
import os
import pwd

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web


class StatusHandler(APIHandler):
    """Who and where this session is: the first thing a user (or a test) checks."""

    @web.authenticated
    def get(self):
        from . import __version__

        account = pwd.getpwuid(os.getuid())
        self.finish(
            json.dumps(
                {
                    "officina": __version__,
                    "hub_user": os.environ.get("JUPYTERHUB_USER"),
                    "server_name": os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
                    "account": account.pw_name,
                    "uid": os.getuid(),
                    "home": os.environ.get("HOME"),
                    "profile": os.environ.get("OFFICINA_PROFILE"),
                    "memory_limit": int(os.environ.get("OFFICINA_MEM_LIMIT") or 0) or None,
                    "cpu_limit": float(os.environ.get("OFFICINA_CPU_LIMIT") or 0) or None,
                    "limits": os.environ.get("OFFICINA_LIMITS"),
                    "gpus": [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g],
                }
            )
        )


class TokenStatusHandler(APIHandler):
    """The session's IAM token: state, expiry, groups, audience. Never the token itself."""

    @web.authenticated
    def get(self):
        from .token_keeper import read_status

        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(read_status()))

    @web.authenticated
    async def post(self):
        """Renew now (e.g. after logging in again) and answer the new status."""
        from .token_keeper import read_status

        keeper = self.settings.get("officina_token_keeper")
        if keeper is None:
            raise web.HTTPError(409, "This session has no token path (BEARER_TOKEN_FILE unset).")
        await keeper.renew()
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(read_status()))


def setup_handlers(web_app) -> None:
    base = url_path_join(web_app.settings["base_url"], "officina", "api")
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "status"), StatusHandler),
            (url_path_join(base, "token"), TokenStatusHandler),
        ],
    )
