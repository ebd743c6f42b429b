"""Userinfo, revocation (RFC 7009) and introspection (RFC 7662) on authlib's endpoints."""

from __future__ import annotations

from datetime import datetime, timezone

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from authlib.oidc.core import UserInfoEndpoint as _UserInfoEndpoint

from .grants import ANY_AUTH, SECRET_AUTH
from .profiles import PROFILES
from .scopes import split_scope
from .store import RefreshToken
from .tokens import AccessToken


class AccessTokenValidator(BearerTokenValidator):
    def __init__(self, tokens):
        super().__init__()
        self.tokens = tokens

    def authenticate_token(self, token_string):
        return self.tokens.verify_access_token(token_string)


class UserInfoEndpoint(_UserInfoEndpoint):
    def __call__(self, request):
        token = self.resource_protector.acquire_token("openid")
        user = token.get_user()
        if user is None:
            raise InvalidTokenError("The token does not belong to a known user.")
        # The token itself says which profile minted it, even if the client was re-registered.
        if "wlcg.ver" in token.claims:
            profile = PROFILES["wlcg"]
        elif "voperson_id" in token.claims:
            profile = PROFILES["aarc"]
        else:
            profile = PROFILES["iam"]
        info = profile.userinfo(
            user, split_scope(token.scope), token.claims, self.server.organisation
        )
        return 200, info, default_json_headers


class _TokenLookup:
    """Finds an access or a refresh token, trying the hinted kind first (RFC 7009 2.1)."""

    def check_params(self, request, client):
        # Unknown hints are ignored rather than refused: the search covers both kinds anyway.
        if "token" not in request.form:
            raise InvalidRequestError("Missing 'token' in request.")

    def query_token(self, token_string, token_type_hint):
        lookups = [
            lambda: self.server.tokens.verify_access_token(token_string),
            lambda: self.server.store.find_refresh_token(token_string),
        ]
        if token_type_hint == "refresh_token":
            lookups.reverse()
        for lookup in lookups:
            token = lookup()
            if token is not None:
                return token
        return None


class RevocationEndpoint(_TokenLookup, _RevocationEndpoint):
    CLIENT_AUTH_METHODS = ANY_AUTH

    def revoke_token(self, token, request):
        if isinstance(token, AccessToken):
            self.server.store.revoke_access_token(token.jti, int(token.claims["exp"]))
        else:
            self.server.store.revoke_refresh_token(token)


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z")


class IntrospectionEndpoint(_TokenLookup, _IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = SECRET_AUTH

    def check_permission(self, token, client, request):
        # Resource servers introspect access tokens issued to other clients; a refresh token
        # is only ever shown to the client that holds it.
        if isinstance(token, RefreshToken):
            return token.check_client(client)
        return True

    def introspect_token(self, token):
        if isinstance(token, RefreshToken):
            user = self.server.users.by_sub(token.sub)
            payload = {
                "client_id": token.client_id,
                "scope": token.scope,
                "sub": token.sub,
                "iss": self.server.tokens.issuer,
                "iat": token.issued_at,
                "token_type": "refresh_token",
            }
            if token.expires_at is not None:
                payload["exp"] = token.expires_at
                payload["expires_at"] = _iso(token.expires_at)
            if user is not None:
                payload["user_id"] = user.username
            return payload

        claims = token.claims
        payload = {
            key: claims[key]
            for key in ("sub", "iss", "client_id", "scope", "exp", "iat", "jti", "aud", "act")
            if key in claims
        }
        payload["token_type"] = "Bearer"
        payload["expires_at"] = _iso(int(claims["exp"]))
        user = token.get_user()
        if user is not None:
            payload.update(
                user_id=user.username,
                preferred_username=user.username,
                organisation_name=self.server.organisation,
            )
            if user.email:
                payload["email"] = user.email
            if user.all_groups:
                payload["groups"] = list(user.all_groups)
        return payload
