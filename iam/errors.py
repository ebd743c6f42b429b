"""OAuth error responses that INDIGO-IAM sends and authlib has no class for.

IAM's status codes matter to the hub: every 401 on refresh means "log in again", while a 400
`invalid_scope` is a bug in the caller. These classes give each situation of the table in
iam-reference.md its exact status and error code.
"""

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidScopeError

# RFC 6749 section 5.2 allows only these characters in error_description; authlib raises a
# ValueError (a 500) for anything else, so text that echoes request input goes through
# safe_text() first.
_ALLOWED = {chr(c) for c in range(0x20, 0x7F)} - {'"', "\\"}


def safe_text(text: str, limit: int = 200) -> str:
    """Make request-derived text fit into an error description."""
    cleaned = "".join(c if c in _ALLOWED else "?" for c in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


class InvalidTokenError(OAuth2Error):
    """A refresh token that is expired, revoked or unknown: IAM answers 401, not 400."""

    error = "invalid_token"
    status_code = 401


class UnauthorizedError(OAuth2Error):
    """A suspended user refreshing ("User alice is not active.")."""

    error = "unauthorized"
    status_code = 401


class ForbiddenExchangeError(OAuth2Error):
    """A token exchange IAM refuses by policy (same client asking for offline_access)."""

    error = "access_denied"
    status_code = 403


def scope_not_allowed(scope: str, client_id: str) -> InvalidScopeError:
    return InvalidScopeError(
        f"Scope '{safe_text(scope)}' not allowed for client '{safe_text(client_id)}'"
    )
