"""Login with INDIGO-IAM: GenericOAuthenticator configured from the issuer URL alone.

Endpoints come from the issuer's discovery document; groups come from the configured claim,
with IAM's `/` prefix of `wlcg.groups` removed and every ancestor of a nested group added
(membership of `a/b` is membership of `a`). A user outside the allowed groups is refused with
a page that names their groups and the groups this platform admits.
"""

from __future__ import annotations

import httpx
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Unicode, default


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


class IAMAuthenticator(GenericOAuthenticator):
    issuer = Unicode(config=True, help="Issuer URL of the IAM (discovery is read from it).")
    groups_claim = Unicode("groups", config=True, help="Claim holding the user's groups.")

    _discovery: dict | None = None

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
            return with_ancestors(auth_state.get(self.user_auth_state_key, {}).get(self.groups_claim, []))

        return groups

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
