"""The grants the stand-in supports, as authlib grants with IAM's answers to the edge cases.

Every grant mints through `server.tokens` (tokens.TokenService), which also persists refresh
tokens, so authlib's separate `save_token` step has nothing left to do.
"""

from __future__ import annotations

import time

from authlib.oauth2.rfc6749 import (
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    grants,
)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import grants as oidc_grants

from .config import TOKEN_EXCHANGE
from .errors import ForbiddenExchangeError, InvalidTokenError, UnauthorizedError, safe_text
from .scopes import requested_audience, split_scope

SECRET_AUTH = ["client_secret_basic", "client_secret_post"]
ANY_AUTH = [*SECRET_AUTH, "none"]


def _inactive(user) -> UnauthorizedError:
    return UnauthorizedError(f"User {safe_text(user.username)} is not active.")


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ANY_AUTH

    @staticmethod
    def validate_authorization_redirect_uri(request, client):
        # authlib's message echoes the URI, and an echoed quote would crash the error page.
        uri = request.payload.redirect_uri
        if uri:
            if not client.check_redirect_uri(uri):
                raise InvalidRequestError("The redirect_uri is not registered for this client.")
            return uri
        default = client.get_default_redirect_uri()
        if not default:
            raise InvalidRequestError("Missing 'redirect_uri' in request.")
        return default

    def save_authorization_code(self, code, request):
        data = request.payload.data
        now = int(time.time())
        self.server.store.save_code(
            code,
            client_id=request.client.client_id,
            sub=request.user.sub,
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            audience=requested_audience(data),
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=getattr(request, "auth_time", None) or now,
            expires_at=now + request.client.lifetimes.code,
        )

    def query_authorization_code(self, code, client):
        return self.server.store.find_code(code, client.client_id)

    def delete_authorization_code(self, authorization_code):
        self.server.store.delete_code(authorization_code)

    def authenticate_user(self, authorization_code):
        user = self.server.users.by_sub(authorization_code.sub)
        if user is not None and not user.active:
            raise _inactive(user)
        return user

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=True):
        code = self.request.authorization_code
        return self.server.tokens.issue(
            client=self.request.client,
            user=user,
            scope=scope,
            audience=requested_audience(self.request.payload.data) or code.audience,
            auth_time=code.auth_time,
            include_refresh_token=include_refresh_token,
        )


class ProofKeyForCodeExchange(CodeChallenge):
    """PKCE (plain and S256); clients registered with `require_pkce` cannot skip it."""

    def validate_code_challenge(self, grant, redirect_uri):
        client = grant.request.client
        if client.config.require_pkce and not grant.request.payload.data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': this client must use PKCE.")
        super().validate_code_challenge(grant, redirect_uri)


class OpenIDCode(oidc_grants.OpenIDCode):
    """ID tokens for the code flow, shaped by the client's token profile."""

    def __init__(self, tokens, store):
        super().__init__(require_nonce=False)
        self.tokens = tokens
        self.store = store

    def exists_nonce(self, nonce, request):
        return self.store.nonce_pending(request.payload.client_id, nonce)

    def encode_id_token(self, token, request):
        code = request.authorization_code
        return self.tokens.id_token(
            client=request.client,
            user=request.user,
            scope=token["scope"],
            auth_time=code.auth_time,
            nonce=code.nonce,
            access_token=token["access_token"],
        )


class OpenIDRefresh(oidc_grants.OpenIDToken):
    """IAM answers a refresh with a fresh ID token too (without the login's nonce)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def encode_id_token(self, token, request):
        return self.tokens.id_token(
            client=request.client,
            user=request.user,
            scope=token["scope"],
            auth_time=request.refresh_token.auth_time,
            access_token=token["access_token"],
        )


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ANY_AUTH

    def _validate_request_token(self, client):
        value = self.request.form.get("refresh_token")
        if not value:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        record = self.server.store.find_refresh_token(value)
        # IAM answers 401 invalid_token (not 400 invalid_grant) for all of these; a token
        # of another client is as unknown to this one as a made-up value.
        if record is None or not record.check_client(client):
            raise InvalidTokenError("Invalid refresh token.")
        if record.is_revoked():
            raise InvalidTokenError("Invalid refresh token: the token has been revoked.")
        if record.is_expired():
            raise InvalidTokenError("Invalid refresh token: the token has expired.")
        return record

    def _validate_token_scope(self, token):
        requested = split_scope(self.request.payload.scope)
        if requested and not set(requested) <= set(split_scope(token.get_scope())):
            raise InvalidScopeError("Up-scoping is not allowed.")

    def validate_token_request(self):
        super().validate_token_request()
        record = self.request.refresh_token
        user = self.server.users.by_sub(record.sub)
        if user is None:
            raise InvalidTokenError("Invalid refresh token: its user no longer exists.")
        if not user.active:
            raise _inactive(user)
        self.request.user = user

    def authenticate_user(self, refresh_token):
        return self.request.user

    @hooked
    def create_token_response(self):
        record = self.request.refresh_token
        client = self.request.client
        rotate = client.config.refresh_token_rotation
        token = self.server.tokens.issue(
            client=client,
            user=self.request.user,
            scope=" ".join(split_scope(self.request.payload.scope)) or record.scope,
            audience=requested_audience(self.request.payload.data) or record.audience,
            auth_time=record.auth_time,
            include_refresh_token=rotate,
            refresh_scope=record.scope,
        )
        if rotate:
            self.server.store.revoke_refresh_token(record)
        else:
            token["refresh_token"] = self.request.form["refresh_token"]
        return 200, token, self.TOKEN_RESPONSE_HEADER


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = SECRET_AUTH

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=False):
        client = self.request.client
        return self.server.tokens.issue(
            client=client,
            user=None,
            scope=client.get_allowed_scope(scope),
            audience=requested_audience(self.request.payload.data),
        )


class TokenExchangeGrant(grants.BaseGrant, grants.TokenEndpointMixin):
    """RFC 8693 impersonation, as IAM does it: a live access token in, a new JWT out."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = SECRET_AUTH
    ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
    SUBJECT_TOKEN_TYPES = {
        "urn:ietf:params:oauth:token-type:access_token",
        "urn:ietf:params:oauth:token-type:jwt",
    }

    def validate_token_request(self):
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(
                "The client is not authorized to use the token-exchange grant."
            )
        self.request.client = client
        form = self.request.form
        if form.get("actor_token") or form.get("actor_token_type"):
            raise InvalidRequestError("Delegation is not supported: 'actor_token' is refused.")
        value = form.get("subject_token")
        if not value:
            raise InvalidRequestError("Missing 'subject_token' in request.")
        token_type = form.get("subject_token_type")
        if token_type and token_type not in self.SUBJECT_TOKEN_TYPES:
            raise InvalidRequestError("Unsupported 'subject_token_type'.")
        subject = self.server.tokens.verify_access_token(value)
        if subject is None or subject.is_expired() or subject.is_revoked():
            raise InvalidRequestError("Invalid subject token.")
        user = subject.get_user()
        if user is None:
            raise InvalidRequestError("The subject token does not identify a user.")
        if not user.active:
            raise _inactive(user)
        if not (self.request.payload.scope or "").strip():
            raise InvalidRequestError("Missing 'scope' in request.")
        scope = client.get_allowed_scope(self.request.payload.scope)
        if "offline_access" in split_scope(scope) and subject.check_client(client):
            raise ForbiddenExchangeError(
                "Token exchange not allowed: the client holding the subject token "
                "cannot obtain offline_access by exchanging it."
            )
        self.request.user = user
        self.request.credential = subject
        self.request.scope = scope

    @hooked
    def create_token_response(self):
        client = self.request.client
        subject = self.request.credential
        act = {"sub": client.client_id}
        if "act" in subject.claims:
            # A token exchanged twice names every actor, most recent first (RFC 8693 4.1).
            act["act"] = subject.claims["act"]
        token = self.server.tokens.issue(
            client=client,
            user=self.request.user,
            scope=self.request.scope,
            audience=requested_audience(self.request.payload.data),
            auth_time=subject.claims.get("iat"),
            include_refresh_token=True,
            act=act,
        )
        token["issued_token_type"] = self.ISSUED_TOKEN_TYPE
        return 200, token, self.TOKEN_RESPONSE_HEADER
