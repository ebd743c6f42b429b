"""What a client may ask for: scope syntax, IAM's scope matching and the audience parameters."""

import re
from collections.abc import Iterable, Mapping

# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")

# Parametric scopes whose bare registration allows any parameter: a client registered for
# `wlcg.groups` may ask for `wlcg.groups:/users/cms` to put that group first.
_ANY_PARAMETER = {"wlcg.groups"}

# IAM accepts all three names on /authorize, /token and refresh.
AUDIENCE_PARAMETERS = ("aud", "audience", "resource")


def is_scope_token(value: str) -> bool:
    return bool(SCOPE_TOKEN.match(value))


def split_scope(scope: str | None) -> list[str]:
    """Scope string to an ordered list without duplicates."""
    seen: dict[str, None] = {}
    for item in (scope or "").split():
        seen.setdefault(item, None)
    return list(seen)


def _path_within(path: str, base: str) -> bool:
    # WLCG capability paths are hierarchical: /foo covers /foo/bar but not /foobar.
    if not path.startswith("/") or "/../" in path + "/" or "/./" in path + "/":
        return False
    if base == "/" or path == base:
        return True
    return path.startswith(base.rstrip("/") + "/")


def scope_is_allowed(requested: str, registered: Iterable[str]) -> bool:
    """True when `requested` is covered by one of the client's registered scopes."""
    registered = list(registered)
    if requested in registered:
        return True
    name, sep, parameter = requested.partition(":")
    if not sep:
        return False
    if name in _ANY_PARAMETER and name in registered:
        return True
    for allowed in registered:
        allowed_name, allowed_sep, allowed_path = allowed.partition(":")
        if allowed_sep and allowed_name == name and allowed_path.startswith("/"):
            if _path_within(parameter, allowed_path):
                return True
    return False


def requested_audience(values: Mapping) -> tuple[str, ...]:
    """Audiences asked for with `aud`, `audience` or `resource` (each may be space-separated)."""
    found: dict[str, None] = {}
    for name in AUDIENCE_PARAMETERS:
        getlist = getattr(values, "getlist", None)
        raw = getlist(name) if getlist else [values.get(name)] if values.get(name) else []
        for value in raw:
            for audience in str(value).split():
                found.setdefault(audience, None)
    return tuple(found)


def audience_claim(audience: Iterable[str]) -> str | list[str] | None:
    """JWT `aud`: a string for one audience (as IAM sends it), a list for several."""
    audience = list(audience)
    if not audience:
        return None
    return audience[0] if len(audience) == 1 else audience
