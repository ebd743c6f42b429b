"""Minting and verifying tokens: RS256 JWT access and ID tokens, IAM-shaped refresh tokens."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oidc.core.util import create_half_hash
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from .clients import Client, ClientRegistry
from .keys import SIGNING_ALG, SIGNING_KEY_ID
from .profiles import PROFILES
from .scopes import split_scope
from .store import GrantStore
from .users import User, UserDirectory


@dataclass
class AccessToken(TokenMixin):
    """A verified access token, as authlib's resource protector and endpoints see it."""

    value: str
    claims: dict
    revoked: bool
    users: UserDirectory
    clients: ClientRegistry

    @property
    def scope(self) -> str:
        return self.claims.get("scope", "")

    @property
    def jti(self) -> str:
        return self.claims.get("jti", "")

    def check_client(self, client) -> bool:
        return self.claims.get("client_id") == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.claims.get("exp", 0)) - int(time.time()))

    def is_expired(self) -> bool:
        return int(self.claims.get("exp", 0)) <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User | None:
        # Client-credentials tokens have the client as subject and no user behind them.
        if self.claims.get("sub") == self.claims.get("client_id"):
            return None
        return self.users.by_sub(self.claims.get("sub"))

    def get_client(self) -> Client | None:
        return self.clients.get(self.claims.get("client_id"))


def _b64(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenService:
    def __init__(
        self,
        *,
        issuer: str,
        key: RSAKey,
        store: GrantStore,
        users: UserDirectory,
        clients: ClientRegistry,
        organisation: str,
    ):
        self.issuer = issuer
        self.key = key
        self.store = store
        self.users = users
        self.clients = clients
        self.organisation = organisation

    def sign(self, claims: dict) -> str:
        return jwt.encode({"alg": SIGNING_ALG, "kid": SIGNING_KEY_ID}, claims, self.key)

    def _base_claims(self, client: Client, subject: str, now: int, lifetime: int) -> dict:
        return {
            "sub": subject,
            "iss": self.issuer,
            "client_id": client.client_id,
            "exp": now + lifetime,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }

    def access_token(
        self,
        *,
        client: Client,
        user: User | None,
        scope: str,
        audience: tuple[str, ...] = (),
        act: dict | None = None,
    ) -> str:
        now = int(time.time())
        profile = PROFILES[client.config.token_profile]
        subject = user.sub if user is not None else client.client_id
        claims = self._base_claims(client, subject, now, client.lifetimes.access_token)
        claims["scope"] = scope
        claims.update(
            profile.access_token_claims(user, split_scope(scope), audience, now, self.organisation)
        )
        if act:
            claims["act"] = act
        return self.sign(claims)

    def id_token(
        self,
        *,
        client: Client,
        user: User,
        scope: str,
        auth_time: int | None,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        now = int(time.time())
        profile = PROFILES[client.config.token_profile]
        claims = self._base_claims(client, user.sub, now, client.lifetimes.id_token)
        del claims["client_id"]
        # IAM sends the client id as a plain string, not a one-element list.
        claims["aud"] = client.client_id
        claims["auth_time"] = auth_time or now
        if nonce:
            claims["nonce"] = nonce
        if access_token:
            claims["at_hash"] = create_half_hash(access_token, SIGNING_ALG).decode()
        claims.update(profile.id_token_claims(user, split_scope(scope), self.organisation))
        claims["amr"] = ["pwd"]
        return self.sign(claims)

    def refresh_token(self, client: Client, now: int) -> tuple[str, int | None]:
        """IAM's shape: an unsigned JWT (alg none, trailing dot) holding only exp and jti.

        The value is opaque to clients; it is honoured only if its hash is in the store.
        """
        lifetime = client.lifetimes.refresh_token
        expires_at = now + lifetime if lifetime else None
        payload = {"jti": secrets.token_urlsafe(32)}
        if expires_at:
            payload["exp"] = expires_at
        return f"{_b64({'alg': 'none'})}.{_b64(payload)}.", expires_at

    def issue(
        self,
        *,
        client: Client,
        user: User | None,
        scope: str,
        audience: tuple[str, ...] = (),
        auth_time: int | None = None,
        include_refresh_token: bool = False,
        refresh_scope: str | None = None,
        act: dict | None = None,
    ) -> dict:
        """A token response; a refresh token only for a user who granted `offline_access`.

        `refresh_scope` is the scope the refresh token carries: on a down-scoped refresh it
        stays the originally granted one, so later refreshes may ask for all of it again.
        """
        now = int(time.time())
        token = {
            "access_token": self.access_token(
                client=client, user=user, scope=scope, audience=audience, act=act
            ),
            "token_type": "Bearer",
            "expires_in": client.lifetimes.access_token,
            "scope": scope,
        }
        refresh_scope = refresh_scope or scope
        if (
            include_refresh_token
            and user is not None
            and client.check_grant_type("refresh_token")
            and "offline_access" in split_scope(refresh_scope)
        ):
            value, expires_at = self.refresh_token(client, now)
            self.store.save_refresh_token(
                value,
                client_id=client.client_id,
                sub=user.sub,
                scope=refresh_scope,
                audience=audience,
                auth_time=auth_time or now,
                issued_at=now,
                expires_at=expires_at,
            )
            token["refresh_token"] = value
        return token

    def verify_access_token(self, value: str | None) -> AccessToken | None:
        """The token if this stand-in signed it, whatever its expiry; None otherwise."""
        if not value or value.count(".") != 2:
            return None
        try:
            decoded = jwt.decode(value, self.key, algorithms=[SIGNING_ALG])
        except (JoseError, ValueError, TypeError):
            return None
        claims = decoded.claims
        # ID tokens are signed with the same key; only access tokens carry client_id.
        if decoded.header.get("kid") != SIGNING_KEY_ID or "client_id" not in claims:
            return None
        if claims.get("iss") != self.issuer or not isinstance(claims.get("exp"), int):
            return None
        revoked = self.store.access_token_revoked(str(claims.get("jti", "")))
        return AccessToken(value, claims, revoked, self.users, self.clients)
