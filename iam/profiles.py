"""Token profiles: which claims IAM puts in access tokens, ID tokens and userinfo.

A client is registered with one profile (`iam`, IAM's default, or `wlcg`); each profile is
declared once here and drives all three places where user claims are emitted.
"""

from __future__ import annotations

from .scopes import audience_claim
from .users import User

WLCG_DEFAULT_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
WLCG_VERSION = "1.0"


def _non_empty(claims: dict) -> dict:
    return {k: v for k, v in claims.items() if v not in (None, "", [], ())}


def profile_fields(user: User, organisation: str) -> dict:
    """The userinfo fields of IAM v1.12 that the stand-in knows about."""
    return {
        "name": user.name,
        "preferred_username": user.username,
        "given_name": user.given_name,
        "family_name": user.family_name,
        "email": user.email,
        "email_verified": user.email_verified if user.email else None,
        "organisation_name": organisation,
    }


def wlcg_groups(user: User, scopes: list[str]) -> list[str] | None:
    """`wlcg.groups` claim: None unless asked for; `wlcg.groups:/x` puts `/x` first.

    With the bare `wlcg.groups` scope every group is listed (asked-for ones first); with
    only parametric ones, just the asked-for groups the user belongs to.
    """
    asked = [s.partition(":")[2] for s in scopes if s.startswith("wlcg.groups:")]
    if "wlcg.groups" not in scopes and not asked:
        return None
    member = ["/" + g for g in user.all_groups]
    first = [g for g in dict.fromkeys(asked) if g in member]
    if "wlcg.groups" not in scopes:
        return first
    return first + [g for g in member if g not in first]


class IamProfile:
    name = "iam"

    def access_token_claims(self, user: User | None, scopes, audience, now: int, organisation: str) -> dict:
        claims: dict = {}
        if audience:
            claims["aud"] = audience_claim(audience)
        if user is not None:
            claims["preferred_username"] = user.username
            if user.all_groups:
                claims["groups"] = list(user.all_groups)
        return claims

    def id_token_claims(self, user: User, scopes, organisation: str) -> dict:
        claims: dict = {}
        if "profile" in scopes:
            claims.update(
                name=user.name,
                preferred_username=user.username,
                organisation_name=organisation,
                groups=list(user.all_groups),
            )
        if "email" in scopes:
            claims["email"] = user.email
        return _non_empty(claims)

    def userinfo(self, user: User, scopes, token_claims: dict, organisation: str) -> dict:
        # IAM v1.12: without `profile`, only `sub`; with it every non-empty field and the
        # granted scopes as a JSON array. No groups, no `groups` key.
        if "profile" not in scopes:
            return {"sub": user.sub}
        info = {"sub": user.sub, **profile_fields(user, organisation)}
        info.update(self._userinfo_groups(user, token_claims))
        info["scope"] = list(scopes)
        return _non_empty(info)

    def _userinfo_groups(self, user: User, token_claims: dict) -> dict:
        return {"groups": list(user.all_groups)}


class WlcgProfile(IamProfile):
    name = "wlcg"

    def access_token_claims(self, user: User | None, scopes, audience, now: int, organisation: str) -> dict:
        claims = {
            "wlcg.ver": WLCG_VERSION,
            "aud": audience_claim(audience) or WLCG_DEFAULT_AUDIENCE,
            "nbf": now,
        }
        if user is not None:
            groups = wlcg_groups(user, scopes)
            if groups is not None:
                claims["wlcg.groups"] = groups
        return claims

    def id_token_claims(self, user: User, scopes, organisation: str) -> dict:
        claims = super().id_token_claims(user, scopes, organisation)
        claims.pop("groups", None)
        claims["wlcg.ver"] = WLCG_VERSION
        groups = wlcg_groups(user, scopes)
        if groups is not None:
            claims["wlcg.groups"] = groups
        return claims

    def _userinfo_groups(self, user: User, token_claims: dict) -> dict:
        # The wlcg profile has no `groups`; it repeats the presented token's `wlcg.groups`.
        if "wlcg.groups" in token_claims:
            return {"wlcg.groups": token_claims["wlcg.groups"]}
        return {}


def entitlements(user: User, organisation: str) -> list[str]:
    """AARC-G002 group entitlements, IAM's form: `urn:geant:<org>:group:a:b` for group a/b."""
    namespace = "".join(c if c.isalnum() or c in ".-" else "-" for c in organisation.lower())
    return [f"urn:geant:{namespace}:group:{group.replace('/', ':')}" for group in user.all_groups]


class AarcProfile(IamProfile):
    """IAM's `aarc` profile: groups as `eduperson_entitlement` URNs, identity as `voperson_id`."""

    name = "aarc"

    def _aarc_claims(self, user: User, scopes, organisation: str) -> dict:
        claims = {"voperson_id": f"{user.sub}@{organisation}"}
        if "eduperson_entitlement" in scopes:
            claims["eduperson_entitlement"] = entitlements(user, organisation)
        return claims

    def access_token_claims(self, user, scopes, audience, now, organisation) -> dict:
        claims: dict = {}
        if audience:
            claims["aud"] = audience_claim(audience)
        if user is not None:
            claims["preferred_username"] = user.username
            claims.update(self._aarc_claims(user, scopes, organisation))
        return claims

    def id_token_claims(self, user: User, scopes, organisation: str) -> dict:
        claims = super().id_token_claims(user, scopes, organisation)
        claims.pop("groups", None)
        claims.update(self._aarc_claims(user, scopes, organisation))
        return claims

    def userinfo(self, user: User, scopes, token_claims: dict, organisation: str) -> dict:
        info = super().userinfo(user, scopes, token_claims, organisation)
        if "profile" in scopes:
            info.pop("groups", None)
        if "eduperson_entitlement" in scopes:
            info["eduperson_entitlement"] = entitlements(user, organisation)
        return info


PROFILES = {profile.name: profile for profile in (IamProfile(), WlcgProfile(), AarcProfile())}
