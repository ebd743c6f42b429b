"""The authlib authorization server, assembled with the stand-in's grants and endpoints."""

from __future__ import annotations

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import InvalidClientError

from .clients import ClientRegistry
from .endpoints import (
    AccessTokenValidator,
    IntrospectionEndpoint,
    RevocationEndpoint,
    UserInfoEndpoint,
)
from .grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    OpenIDCode,
    OpenIDRefresh,
    ProofKeyForCodeExchange,
    RefreshTokenGrant,
    TokenExchangeGrant,
)
from .store import GrantStore
from .tokens import TokenService
from .users import UserDirectory


class StandInAuthorizationServer(AuthorizationServer):
    def __init__(
        self,
        *,
        clients: ClientRegistry,
        users: UserDirectory,
        store: GrantStore,
        tokens: TokenService,
        organisation: str,
    ):
        # Tokens are persisted by TokenService when minted, hence the no-op save_token.
        super().__init__(query_client=clients.get, save_token=lambda token, request: None)
        self.clients = clients
        self.users = users
        self.store = store
        self.tokens = tokens
        self.organisation = organisation

    def authenticate_client(self, request, methods, endpoint="token"):
        # IAM answers every failed client authentication with 401 (authlib uses 400 for
        # some), and never says whether the client id or the secret was wrong.
        try:
            return super().authenticate_client(request, methods, endpoint)
        except InvalidClientError:
            raise InvalidClientError(
                status_code=401, description="Bad client credentials"
            ) from None


def create_authorization_server(
    *,
    clients: ClientRegistry,
    users: UserDirectory,
    store: GrantStore,
    tokens: TokenService,
    organisation: str,
) -> StandInAuthorizationServer:
    server = StandInAuthorizationServer(
        clients=clients, users=users, store=store, tokens=tokens, organisation=organisation
    )
    server.register_grant(
        AuthorizationCodeGrant,
        [ProofKeyForCodeExchange(required=True), OpenIDCode(tokens, store)],
    )
    server.register_grant(RefreshTokenGrant, [OpenIDRefresh(tokens)])
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(TokenExchangeGrant)

    protector = ResourceProtector()
    protector.register_token_validator(AccessTokenValidator(tokens))
    server.resource_protector = protector
    server.register_endpoint(UserInfoEndpoint(resource_protector=protector))
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    return server
