"""OpenID Provider metadata and the endpoint paths it advertises (IAM's paths)."""

from __future__ import annotations

from urllib.parse import urljoin

from .clients import ClientRegistry
from .config import TOKEN_EXCHANGE
from .keys import SIGNING_ALG

# Metadata name -> path under the issuer. The Flask routes are registered from this table,
# so what discovery advertises and what is served cannot drift apart.
ENDPOINTS = {
    "authorization_endpoint": "authorize",
    "token_endpoint": "token",
    "userinfo_endpoint": "userinfo",
    "jwks_uri": "jwk",
    "introspection_endpoint": "introspect",
    "revocation_endpoint": "revoke",
}

STANDARD_SCOPES = ("openid", "profile", "email", "offline_access")

CLAIMS = (
    "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "name",
    "preferred_username", "given_name", "family_name", "email", "email_verified",
    "organisation_name", "groups", "wlcg.ver", "wlcg.groups", "eduperson_entitlement",
    "voperson_id",
)


def provider_metadata(issuer: str, clients: ClientRegistry) -> dict:
    scopes = dict.fromkeys(STANDARD_SCOPES)
    for client in clients:
        scopes.update(dict.fromkeys(client.config.scopes))
    metadata = {"issuer": issuer}
    metadata.update({name: urljoin(issuer, path) for name, path in ENDPOINTS.items()})
    metadata.update(
        {
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                TOKEN_EXCHANGE,
            ],
            "scopes_supported": list(scopes),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [SIGNING_ALG],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "claims_supported": list(CLAIMS),
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }
    )
    return metadata
