"""Login with INDIGO-IAM: GenericOAuthenticator configured from the issuer URL alone.

Endpoints come from the issuer's discovery document. Identity is `iss` + `sub` (see
identities.py); groups come from the configured claim (`groups`, `wlcg.groups` or
`eduperson_entitlement`) with every ancestor of a nested group added. A user outside the
allowed groups, or inside a blocked one, is refused with a page that says why.

The hub is the only holder of the refresh token and client secret (in encrypted auth
state). `fresh_token()` is the one path by which anything gets a user's access token: it
refreshes before expiry, one refresh per user at a time, and turns IAM's refusals into
`LoginRequired`, which ends the hub login so the user signs in again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import defaultdict
from urllib.parse import quote

import httpx
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Bool, Float, List, Unicode, default

from .identities import IdentityMap

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# Cookie read by the login page to say why the user has to sign in again. It holds a reason
# code only, never anything secret.
RELOGIN_COOKIE = "officina-relogin"
# Claims of a JWT that describe the token, not the user.
_JWT_ONLY = {"iss", "aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce", "at_hash", "azp", "amr", "acr"}


class LoginRequired(Exception):
    """IAM refused the user's refresh token (or the user lost access): sign in again."""


class TokenServiceError(Exception):
    """IAM could not be asked, or refused a request that a new login would not fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def normalise_issuer(url: str) -> str:
    """IAM's ID tokens carry the issuer with a trailing slash, its access tokens may not."""
    return url.rstrip("/") + "/"


def with_ancestors(groups) -> list[str]:
    """`a/b/c` -> `a`, `a/b`, `a/b/c`: IAM group membership is inherited upwards."""
    found: list[str] = []
    for group in groups or []:
        parts = [p for p in str(group).strip("/").split("/") if p]
        for i in range(1, len(parts) + 1):
            name = "/".join(parts[:i])
            if name not in found:
                found.append(name)
    return found


def groups_from_entitlements(entitlements) -> list[str]:
    """AARC-G002 URNs to group paths: `urn:geant:iam.example:group:users:ai#x` -> `users/ai`."""
    groups = []
    for value in entitlements or []:
        _, marker, rest = str(value).partition(":group:")
        if not marker:
            continue
        path = [p for p in rest.split("#", 1)[0].split(":") if p and "=" not in p]
        if path:
            groups.append("/".join(path))
    return groups


def groups_from_claims(claims: dict, claim: str) -> list[str]:
    """The user's groups, ancestors included, from IAM's claims (a missing claim: none)."""
    raw = claims.get(claim) or []
    if isinstance(raw, str):
        raw = [raw]
    if claim == "eduperson_entitlement":
        raw = groups_from_entitlements(raw)
    return with_ancestors(raw)


def jwt_claims(token: str) -> dict:
    """The payload of a JWT the hub got from IAM over TLS itself (not a signature check)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def expires_at(token_response: dict, now: float) -> float:
    exp = jwt_claims(token_response.get("access_token", "")).get("exp")
    if isinstance(exp, (int, float)):
        return float(exp)
    return now + float(token_response.get("expires_in") or 3600)


class IAMAuthenticator(GenericOAuthenticator):
    issuer = Unicode(config=True, help="Issuer URL of the IAM (discovery is read from it).")
    groups_claim = Unicode("groups", config=True, help="Claim holding the user's groups.")
    blocked_groups = List(Unicode(), config=True, help="IAM groups whose members are refused.")
    identity_db = Unicode(config=True, help="sqlite file mapping iss+sub to hub usernames.")
    token_exchange = Bool(True, config=True, help="Use IAM token exchange for audiences/narrower scopes.")
    token_refresh_margin = Float(
        0.5, config=True, help="Fraction of a token's lifetime left when it is refreshed."
    )

    _discovery: dict | None = None
    _http: httpx.AsyncClient | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # (user, scope, audience) -> token response of an exchange/down-scoped refresh
        self._derived: dict[tuple, dict] = {}
        # user -> their current access token response (never the refresh token)
        self._current: dict[str, dict] = {}
        self._identities = IdentityMap(self.identity_db) if self.identity_db else None

    # ----- discovery ---------------------------------------------------------------------
    @property
    def discovery(self) -> dict:
        if self._discovery is None:
            url = normalise_issuer(self.issuer) + ".well-known/openid-configuration"
            response = httpx.get(url, timeout=10)
            response.raise_for_status()
            document = response.json()
            if normalise_issuer(document.get("issuer", "")) != normalise_issuer(self.issuer):
                raise ValueError(f"{url} names issuer {document.get('issuer')!r}, not {self.issuer!r}")
            self._discovery = document
        return self._discovery

    @default("authorize_url")
    def _authorize_url(self):
        return self.discovery["authorization_endpoint"]

    @default("token_url")
    def _token_url(self):
        return self.discovery["token_endpoint"]

    @default("userdata_url")
    def _userdata_url(self):
        return self.discovery["userinfo_endpoint"]

    @default("login_service")
    def _login_service(self):
        return "INDIGO IAM"

    @default("manage_groups")
    def _manage_groups(self):
        return True

    @default("auth_state_groups_key")
    def _groups_from_auth_state(self):
        def groups(auth_state: dict) -> list[str]:
            return groups_from_claims(auth_state.get(self.user_auth_state_key) or {}, self.groups_claim)

        return groups

    def get_handlers(self, app):
        # The token service rides on the authenticator's handler hook: it needs the
        # authenticator's encrypted auth state and per-user refresh locks.
        from .token_service import handlers

        return list(super().get_handlers(app)) + handlers()

    # ----- identity ----------------------------------------------------------------------
    def user_info_to_username(self, user_info):
        preferred = user_info.get(self.username_claim) or ""
        if self._identities is None:
            return super().user_info_to_username(user_info)
        try:
            return self._identities.username_for(
                normalise_issuer(self.issuer), str(user_info.get("sub") or ""), str(preferred)
            )
        except ValueError as err:
            raise web.HTTPError(403, f"IAM login cannot be used: {err}") from None

    async def build_auth_state_dict(self, token_info, user_info):
        state = super().build_auth_state_dict(token_info, user_info)
        state["issuer"] = normalise_issuer(self.issuer)
        state["expires_at"] = expires_at(token_info, time.time())
        return state

    # ----- authorisation -----------------------------------------------------------------
    def check_blocked_users(self, username, authentication=None):
        if not super().check_blocked_users(username, authentication):
            return False
        groups = set((authentication or {}).get("groups") or [])
        blocked = sorted(groups & set(self.blocked_groups))
        if blocked:
            raise web.HTTPError(
                403,
                f"{username} may not use this platform: membership of the IAM group "
                f"{', '.join(blocked)} is blocked here. Contact the platform administrators.",
            )
        return True

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model):
            return True
        groups = ", ".join(auth_model.get("groups") or []) or "none"
        allowed = ", ".join(sorted(self.allowed_groups)) or "none configured"
        raise web.HTTPError(
            403,
            f"{username} is not a member of any group allowed on this platform. "
            f"Your IAM groups: {groups}. Groups allowed here: {allowed}. "
            "Ask your IAM group manager to add you to one of them, then log in again.",
        )

    # ----- keeping tokens fresh ----------------------------------------------------------
    def _needs_refresh(self, state: dict, now: float) -> bool:
        response = state.get("token_response") or {}
        lifetime = float(response.get("expires_in") or 3600)
        return state.get("expires_at", 0) - now < lifetime * self.token_refresh_margin

    async def refresh_user(self, user, handler=None, **kwargs):
        """Called by JupyterHub on requests every `auth_refresh_age` seconds."""
        state = await user.get_auth_state()
        if not state or not state.get("refresh_token"):
            if state and state.get("login_required") and handler is not None:
                # The token service already learnt that IAM refused this login.
                handler.set_cookie(RELOGIN_COOKIE, "refresh-refused", path=handler.hub.base_url)
            return False
        if not self._needs_refresh(state, time.time()):
            return True
        try:
            return await self._refresh(user, force=False)
        except LoginRequired as err:
            self.log.warning("Login of %s ended: %s", user.name, err)
            if handler is not None:
                handler.set_cookie(RELOGIN_COOKIE, "refresh-refused", path=handler.hub.base_url)
            return False
        except TokenServiceError as err:
            # IAM unreachable: keep the login; the next request tries again.
            self.log.warning("Could not refresh tokens of %s: %s", user.name, err)
            return True

    async def fresh_token(self, user, scope: str | None = None, audience: str | None = None) -> dict:
        """A token response for `user` with at least the refresh margin of its life left.

        Without scope and audience it is the user's own access token; otherwise a token for
        that audience and/or those scopes (token exchange, or a down-scoped refresh).
        """
        now = time.time()
        current = self._current.get(user.name)
        if not scope and not audience and current and not self._needs_refresh(current, now):
            # The common case, answered from memory: no decryption, no database.
            return {**current["token_response"], "expires_at": current["expires_at"]}
        async with self._locks[user.name]:
            state = await user.get_auth_state()
            if not state or not state.get("refresh_token"):
                self._current.pop(user.name, None)
                raise LoginRequired(state.get("login_required") if state else "no IAM login on record")
            now = time.time()
            if self._needs_refresh(state, now):
                await self._refresh_locked(user, state)
                state = await user.get_auth_state()
            # Only what is needed to answer: the refresh token stays in the encrypted state.
            self._current[user.name] = {
                "token_response": {k: v for k, v in state["token_response"].items() if k != "refresh_token"},
                "expires_at": state["expires_at"],
            }
            if not scope and not audience:
                return {**self._current[user.name]["token_response"], "expires_at": state["expires_at"]}
            key = (user.name, scope or "", audience or "")
            derived = self._derived.get(key)
            if derived and not self._needs_refresh(
                {"token_response": derived, "expires_at": derived["expires_at"]}, now
            ):
                return derived
            derived = await self._derive(user, state, scope, audience)
            self._derived[key] = derived
            return derived

    async def _refresh(self, user, force: bool):
        async with self._locks[user.name]:
            state = await user.get_auth_state()
            if not state or not state.get("refresh_token"):
                raise LoginRequired("no IAM login on record")
            if not force and not self._needs_refresh(state, time.time()):
                return True  # another request refreshed while this one waited
            return await self._refresh_locked(user, state)

    async def _refresh_locked(self, user, state: dict) -> dict:
        params = {"grant_type": "refresh_token", "refresh_token": state["refresh_token"]}
        try:
            token_info = await self._token_request(params)
        except LoginRequired as err:
            # Forget the dead tokens: nothing may use them again, and the next call fails fast.
            await user.save_auth_state({"login_required": str(err)})
            self._forget_derived(user.name)
            raise
        if not token_info.get("refresh_token"):
            token_info["refresh_token"] = state["refresh_token"]
        try:
            model = await self._refreshed_auth_model(token_info, state)
        except web.HTTPError as err:
            raise TokenServiceError(502, f"IAM userinfo failed after refresh: {err.log_message}") from None
        if model["name"] != user.name:
            raise LoginRequired("the refreshed IAM identity belongs to another hub user")
        try:
            await self.check_allowed(user.name, model)
            self.check_blocked_users(user.name, model)
        except web.HTTPError as err:
            await user.save_auth_state({"login_required": err.log_message})
            self._forget_derived(user.name)
            raise LoginRequired(err.log_message) from None
        await user.save_auth_state(model["auth_state"])
        if self.manage_groups and "groups" in model:
            if sorted(model["groups"]) != sorted(g.name for g in user.groups):
                user.sync_groups(model["groups"])
        self._forget_derived(user.name)
        self.log.info("Refreshed IAM tokens of %s", user.name)
        return model

    async def _refreshed_auth_model(self, token_info: dict, state: dict) -> dict:
        """The auth model after a refresh. IAM answers a refresh with a new ID token holding
        the same profile claims as userinfo (groups included), so the groups are re-read
        from it without another request; without one, userinfo is asked as at login."""
        claims = jwt_claims(token_info.get("id_token") or "")
        previous = state.get(self.user_auth_state_key) or {}
        if not claims or claims.get("sub") != previous.get("sub"):
            return await self._token_to_auth_model(token_info)
        user_info = {**previous, **{k: v for k, v in claims.items() if k not in _JWT_ONLY}}
        # A group claim missing from the new token means no groups now, not "as before".
        user_info[self.groups_claim] = claims.get(self.groups_claim, [])
        auth_state = await self.build_auth_state_dict(token_info, user_info)
        name = self.normalize_username(self.user_info_to_username(user_info))
        model = {"name": name, "admin": True if name in self.admin_users else None, "auth_state": auth_state}
        model = await self.update_auth_model(model)
        if self.manage_groups:
            model = await self._apply_managed_groups(model)
        return model

    def _forget_derived(self, name: str) -> None:
        self._current.pop(name, None)
        for key in [k for k in self._derived if k[0] == name]:
            del self._derived[key]

    async def _derive(self, user, state: dict, scope: str | None, audience: str | None) -> dict:
        if self.token_exchange:
            params = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": state["access_token"],
                "subject_token_type": ACCESS_TOKEN_TYPE,
                # IAM requires a scope on exchange; without one, the login's scopes minus
                # offline_access (an exchanged token must not outlive the session's need).
                "scope": scope or " ".join(s for s in state.get("scope", []) if s != "offline_access"),
            }
        else:
            params = {"grant_type": "refresh_token", "refresh_token": state["refresh_token"]}
            if scope:
                params["scope"] = scope
        if audience:
            params["audience"] = audience
        token_info = await self._token_request(params)
        new_refresh = token_info.pop("refresh_token", None)
        if not self.token_exchange and new_refresh and new_refresh != state["refresh_token"]:
            # A rotating client: the old refresh token is dead now; keep the new one.
            await user.save_auth_state({**state, "refresh_token": new_refresh,
                                        "token_response": {**state["token_response"], "refresh_token": new_refresh}})
        token_info["expires_at"] = expires_at(token_info, time.time())
        return token_info

    async def _token_request(self, params: dict) -> dict:
        """POST to IAM's token endpoint; IAM's refusals become LoginRequired or TokenServiceError."""
        if self._http is None:
            # One client for the hub's lifetime: a new one per request costs an SSL context
            # and a connection each time, which dominated the latency of concurrent renewals.
            self._http = httpx.AsyncClient(timeout=15, verify=self.validate_server_cert)
        try:
            response = await self._http.post(
                self.token_url, data=params, auth=(self.client_id, self.client_secret)
            )
        except httpx.HTTPError as err:
            raise TokenServiceError(503, f"IAM token endpoint unreachable: {type(err).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200 and "access_token" in body:
            return body
        error = body.get("error", f"HTTP {response.status_code}")
        description = body.get("error_description", "")
        reason = f"IAM answered {response.status_code} {error}" + (f": {description}" if description else "")
        grant = params["grant_type"]
        if grant == "refresh_token" and (
            response.status_code == 401 or error in ("invalid_grant", "invalid_token", "unauthorized")
        ):
            raise LoginRequired(reason)
        if response.status_code == 401 and grant == TOKEN_EXCHANGE and error == "invalid_client":
            raise TokenServiceError(502, reason + " (the hub's client is misconfigured at IAM)")
        status = 400 if response.status_code in (400, 403) else 502
        raise TokenServiceError(status, reason)


def token_url_for(hub_api_url: str, username: str) -> str:
    return f"{hub_api_url.rstrip('/')}/officina/token/{quote(username, safe='')}"

