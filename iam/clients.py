"""Registered OAuth clients, as authlib sees them, built from the configuration."""

from __future__ import annotations

import hmac

from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError

from .config import ClientConfig
from .errors import scope_not_allowed
from .scopes import is_scope_token, scope_is_allowed, split_scope


class Client(ClientMixin):
    def __init__(self, config: ClientConfig):
        self.config = config
        self.client_id = config.client_id
        # Read by authlib's UserInfoEndpoint; the stand-in never signs userinfo.
        self.client_metadata: dict = {}

    def __repr__(self) -> str:
        return f"Client({self.client_id!r})"

    @property
    def lifetimes(self):
        return self.config.lifetimes

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only an unambiguous registration may be implied, as in IAM.
        uris = self.config.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string match: no prefix or wildcard matching, like IAM.
        return redirect_uri in self.config.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.config.is_public:
            return False
        return hmac.compare_digest(
            self.config.client_secret.encode(), (client_secret or "").encode()
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.config.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and self.check_grant_type("authorization_code")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.config.grant_types

    def get_allowed_scope(self, scope: str | None) -> str:
        """The requested scope, or an `invalid_scope` error naming the first refused one.

        Without a scope parameter the client gets every scope it is registered for, which
        is what IAM (through MITREid's default scopes) does.
        """
        if scope is None or not scope.strip():
            return " ".join(self.config.scopes)
        requested = split_scope(scope)
        for item in requested:
            if not is_scope_token(item):
                raise InvalidScopeError("Malformed scope value.")
            if not scope_is_allowed(item, self.config.scopes):
                raise scope_not_allowed(item, self.client_id)
        return " ".join(requested)


class ClientRegistry:
    def __init__(self, configs):
        self._clients = {c.client_id: Client(c) for c in configs}

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self):
        return iter(self._clients.values())

    def get(self, client_id: str | None) -> Client | None:
        return self._clients.get(client_id) if client_id else None
