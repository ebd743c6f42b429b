"""Officina's IAM stand-in: an OpenID Connect provider that behaves like INDIGO-IAM v1.12.

It lets the platform and its tests log in without a real IAM: the same endpoint paths, token
shapes (`iam` and `wlcg` profiles), error codes and status codes as the IAM described in
`shared/iam-reference.md`. Run it with ``python -m officina.iam --config FILE``.

Where the stand-in deliberately differs from a real INDIGO-IAM:

- Users come from a YAML file (re-read when it changes), not a database; there is no SCIM
  API (`/scim`), no dashboard, no registration, no AUP, no external identity providers
  (SAML, OIDC federation, X.509) and no MFA: `amr` is always ``["pwd"]``.
- Only the authorization-code (with PKCE), refresh-token, client-credentials and
  token-exchange grants exist. No device code flow (`/devicecode`), no implicit or password
  grant, no dynamic client registration (`/iam/api/client-registration`, `/register`):
  clients are declared in the configuration. Discovery lists only what is served.
- No consent page: a logged-in user is sent straight back to any registered client.
- The login page is the stand-in's own plain form; `/logout` ends its browser session.
- No scope policies and no optional groups: a registered scope is granted to every user.
  WLCG capability scopes (`storage.read:/path`) are matched by path prefix against the
  client's registration, without per-user policy.
- The `aarc` profile carries `eduperson_entitlement` (every group, ancestors included, as
  `urn:geant:<organisation>:group:a:b`) and `voperson_id`; no AARC assurance claims.
- Access tokens carry the issuer with its trailing slash, exactly like the ID token.
- Refresh tokens have IAM's shape (an unsigned JWT holding `exp` and `jti`) but are checked
  only against the stored hash. A refresh token of another client gets 401 `invalid_token`
  (IAM answers `invalid_client` and deletes the token).
- Revoking a refresh token does not revoke the access tokens issued from it, and reusing a
  code does not revoke the tokens issued from it: both stay valid until they expire.
- Concurrent refreshes are serialised by a lock and never fail with a 500 as IAM's can;
  with rotation, the loser of a race gets 401 `invalid_token`.
- A token exchange answers without an ID token, and refreshing an exchanged refresh token
  gives tokens without the `act` claim.
- Introspection lets any authenticated client introspect any access token, and a refresh
  token only by the client holding it.
- Plain http is accepted on any host (authlib would allow it on loopback only), because
  the stand-in also runs inside pods and compose networks.
"""

from .config import ConfigError, StandInConfig, load_config


def create_app(config: StandInConfig):
    """The Flask application for `config` (see provider.create_app)."""
    from .provider import create_app as _create_app

    return _create_app(config)


__all__ = ["ConfigError", "StandInConfig", "create_app", "load_config"]
