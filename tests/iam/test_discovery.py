"""Discovery, JWKS and health: what a client reads before it logs anyone in."""

from authlib.oidc.discovery import OpenIDProviderMetadata


def test_discovery_has_iam_endpoints_and_capabilities(iam):
    response = iam.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    meta = response.json()

    assert meta["issuer"] == iam.issuer and meta["issuer"].endswith("/")
    assert meta["authorization_endpoint"] == iam.issuer + "authorize"
    assert meta["token_endpoint"] == iam.issuer + "token"
    assert meta["userinfo_endpoint"] == iam.issuer + "userinfo"
    assert meta["jwks_uri"] == iam.issuer + "jwk"
    assert meta["introspection_endpoint"] == iam.issuer + "introspect"
    assert meta["revocation_endpoint"] == iam.issuer + "revoke"
    assert "end_session_endpoint" not in meta

    assert set(meta["code_challenge_methods_supported"]) == {"plain", "S256"}
    assert {"authorization_code", "refresh_token", iam.TOKEN_EXCHANGE} <= set(
        meta["grant_types_supported"]
    )
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"openid", "profile", "email", "offline_access", "wlcg.groups"} <= set(
        meta["scopes_supported"]
    )
    # authlib's own validator of OpenID Provider Metadata accepts the document.
    OpenIDProviderMetadata(meta).validate()


def test_every_advertised_endpoint_is_served(iam):
    meta = iam.get("/.well-known/openid-configuration").json()
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                 "introspection_endpoint", "revocation_endpoint"):
        path = meta[name].removeprefix(iam.url)
        assert iam.get(path).status_code != 404, name


def test_jwks_publishes_public_rsa1_key(iam):
    jwks = iam.get("/jwk").json()
    assert len(jwks["keys"]) == 1
    key = jwks["keys"][0]
    assert key["kid"] == "rsa1"
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private parts published"


def test_health(iam):
    response = iam.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["issuer"] == iam.issuer
    assert body["users"] == 4 + len(iam.EXTRA_USERS)
