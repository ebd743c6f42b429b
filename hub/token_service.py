"""The hub's token service: a session gets a short-lived IAM access token, nothing more.

`GET /hub/api/officina/token/<user>[?scope=...&audience=...]`, authenticated with a
JupyterHub token holding `custom:officina:token` for that user (every user server's own
token has it; see hub_config.py). The answer is an access token and its expiry; the refresh
token and the hub's client secret never leave the hub. Served through the authenticator's
handler hook, because only the hub can read and update the encrypted auth state.
"""

from __future__ import annotations

import json
import time

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from .authenticator import LoginRequired, TokenServiceError, groups_from_claims, jwt_claims

SCOPE = "custom:officina:token"
SCOPE_DESCRIPTION = "Get short-lived IAM access tokens of the user (the token service)."
ROUTE = r"/api/officina/token/([^/]+)"
MAX_PARAMETER = 2048


class TokenHandler(APIHandler):
    def check_xsrf_cookie(self):
        # Only token-authenticated GETs reach this handler; there is nothing to forge.
        return

    async def get(self, user_name: str):
        if not self.current_user:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not self.has_scope(f"{SCOPE}!user={user_name}"):
            raise web.HTTPError(403, f"This token may not get IAM tokens of {user_name} (needs {SCOPE}).")
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, f"No such user: {user_name}")
        scope = self.get_argument("scope", "").strip() or None
        audience = self.get_argument("audience", "").strip() or None
        for name, value in (("scope", scope), ("audience", audience)):
            if value and (len(value) > MAX_PARAMETER or any(ord(c) < 0x21 and c != " " for c in value)):
                raise web.HTTPError(400, f"{name}: not a valid value")
        try:
            token = await self.authenticator.fresh_token(user, scope=scope, audience=audience)
        except LoginRequired as err:
            self.set_status(401)
            self.set_header("Cache-Control", "no-store")
            self.finish(json.dumps({
                "error": "login_required",
                "message": f"{user_name} must log in again at the hub: {err}",
            }))
            return
        except TokenServiceError as err:
            raise web.HTTPError(err.status, str(err)) from None
        claims = jwt_claims(token["access_token"])
        now = time.time()
        scope_value = token.get("scope", "")
        body = {
            "access_token": token["access_token"],
            "token_type": "Bearer",
            "expires_at": int(token["expires_at"]),
            "expires_in": max(0, int(token["expires_at"] - now)),
            "lifetime": int(token.get("expires_in") or 0),
            "scope": scope_value,
            "audience": claims.get("aud"),
            "groups": groups_from_claims(claims, self.authenticator.groups_claim)
            or [g.name for g in user.groups],
            "refresh_margin": self.authenticator.token_refresh_margin,
        }
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


def handlers() -> list[tuple]:
    return [(ROUTE, TokenHandler)]
