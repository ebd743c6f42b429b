"""The stand-in's configuration: one YAML or JSON file, validated once at start.

Unknown keys are errors (a typo must not silently fall back to a default) and every error is
one line naming the bad key. Secrets live only in this file, never on the command line, and
error messages never quote a secret's value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import yaml

from .scopes import is_scope_token

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE)
TOKEN_PROFILES = ("iam", "wlcg", "aarc")
SECRET_KEYS = {"client_secret", "password"}

_LIFETIMES_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "access_token": {"type": "integer", "minimum": 1},
        "id_token": {"type": "integer", "minimum": 1},
        "refresh_token": {"type": "integer", "minimum": 0},  # 0 = never expires, as IAM
        "code": {"type": "integer", "minimum": 1},
    },
}

_CLIENT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["client_id"],
    "properties": {
        "client_id": {"type": "string", "pattern": r"^[A-Za-z0-9._~-]{1,128}$"},
        # Absent or null: a public client, which must use PKCE.
        "client_secret": {"type": ["string", "null"], "minLength": 1},
        "name": {"type": "string"},
        "redirect_uris": {"type": "array", "items": {"type": "string"}},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "grant_types": {"type": "array", "items": {"enum": list(GRANT_TYPES)}},
        "token_profile": {"enum": list(TOKEN_PROFILES)},
        # false: a refresh answers with the same refresh token (IAM's default for most
        # clients); true: a new one, and the presented one is revoked.
        "refresh_token_rotation": {"type": "boolean"},
        "require_pkce": {"type": "boolean"},
        "lifetimes": _LIFETIMES_SCHEMA,
    },
}

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port", "state_dir", "users_file", "clients"],
    "properties": {
        "issuer": {"type": "string"},
        "host": {"type": "string", "minLength": 1},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "state_dir": {"type": "string", "minLength": 1},
        "users_file": {"type": "string", "minLength": 1},
        "organisation_name": {"type": "string", "minLength": 1},
        "clients": {"type": "array", "minItems": 1, "items": _CLIENT_SCHEMA},
        "lifetimes": _LIFETIMES_SCHEMA,
        "threads": {"type": "integer", "minimum": 1, "maximum": 64},
        "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
    },
}


class ConfigError(Exception):
    """A configuration problem, worded as one line that names the bad key."""


@dataclass(frozen=True)
class Lifetimes:
    """Token lifetimes in seconds; IAM's defaults."""

    access_token: int = 3600
    id_token: int = 600
    refresh_token: int = 30 * 24 * 3600
    code: int = 300

    def updated(self, overrides: dict | None) -> Lifetimes:
        return dataclasses.replace(self, **(overrides or {}))


@dataclass(frozen=True)
class ClientConfig:
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    name: str = ""
    redirect_uris: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    token_profile: str = "iam"
    refresh_token_rotation: bool = False
    require_pkce: bool = False
    lifetimes: Lifetimes = Lifetimes()

    @property
    def is_public(self) -> bool:
        return not self.client_secret


@dataclass(frozen=True)
class StandInConfig:
    issuer: str
    host: str
    port: int
    state_dir: Path
    users_file: Path
    clients: tuple[ClientConfig, ...]
    lifetimes: Lifetimes = Lifetimes()
    organisation_name: str = "officina"
    threads: int = 8
    log_level: str = "INFO"


def _key_path(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_error_message(error: jsonschema.ValidationError) -> str:
    """One line naming the key; the value is left out where it may be a secret."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        return f"{_key_path(path + unknown[:1])}: unknown key"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"{_key_path(path + missing[:1])}: required key is missing"
    where = _key_path(path) or "top level"
    if SECRET_KEYS.intersection(p for p in path if isinstance(p, str)):
        return f"{where}: must be a non-empty string (value not shown)"
    return f"{where}: {error.message}"


def validate_document(document, schema) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    if errors:
        raise ConfigError(schema_error_message(errors[0]))


def read_document(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        # YAML is a superset of JSON, so one loader reads both.
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path} is not valid YAML or JSON{where}") from None


def _check_url(key: str, url: str, *, slash: bool = False) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: must be an absolute http(s) URL")
    if parts.fragment:
        raise ConfigError(f"{key}: must not have a fragment")
    if slash and not url.endswith("/"):
        raise ConfigError(f"{key}: must end with '/' (INDIGO-IAM's issuer always does)")


def _client(index: int, raw: dict, lifetimes: Lifetimes) -> ClientConfig:
    key = f"clients[{index}]"
    client = ClientConfig(
        client_id=raw["client_id"],
        client_secret=raw.get("client_secret"),
        name=raw.get("name", raw["client_id"]),
        redirect_uris=tuple(raw.get("redirect_uris", ())),
        scopes=tuple(raw.get("scopes", ClientConfig.scopes)),
        grant_types=tuple(raw.get("grant_types", ClientConfig.grant_types)),
        token_profile=raw.get("token_profile", "iam"),
        refresh_token_rotation=raw.get("refresh_token_rotation", False),
        require_pkce=raw.get("require_pkce", not raw.get("client_secret")),
        lifetimes=lifetimes.updated(raw.get("lifetimes")),
    )
    for i, uri in enumerate(client.redirect_uris):
        _check_url(f"{key}.redirect_uris[{i}]", uri)
    for i, scope in enumerate(client.scopes):
        if not is_scope_token(scope):
            raise ConfigError(f"{key}.scopes[{i}]: not a valid scope name")
    if "authorization_code" in client.grant_types and not client.redirect_uris:
        raise ConfigError(f"{key}.redirect_uris: required for the authorization_code grant")
    if client.is_public:
        if not client.require_pkce:
            raise ConfigError(f"{key}.require_pkce: a public client (no secret) needs PKCE")
        confidential_only = {"client_credentials", TOKEN_EXCHANGE} & set(client.grant_types)
        if confidential_only:
            raise ConfigError(
                f"{key}.grant_types: {sorted(confidential_only)[0]} needs a client_secret"
            )
    return client


def load_config(path: str | Path) -> StandInConfig:
    """Read and validate the configuration file; relative paths are relative to it."""
    path = Path(path)
    document = read_document(path)
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    validate_document(document, SCHEMA)

    base = path.resolve().parent
    host = document.get("host", "127.0.0.1")
    port = document["port"]
    url_host = f"[{host}]" if ":" in host else host
    issuer = document.get("issuer", f"http://{url_host}:{port}/")
    _check_url("issuer", issuer, slash=True)

    lifetimes = Lifetimes().updated(document.get("lifetimes"))
    clients = tuple(_client(i, raw, lifetimes) for i, raw in enumerate(document["clients"]))
    seen: set[str] = set()
    for i, client in enumerate(clients):
        if client.client_id in seen:
            raise ConfigError(f"clients[{i}].client_id: duplicate client id")
        seen.add(client.client_id)

    return StandInConfig(
        issuer=issuer,
        host=host,
        port=port,
        state_dir=base / document["state_dir"],
        users_file=base / document["users_file"],
        clients=clients,
        lifetimes=lifetimes,
        organisation_name=document.get("organisation_name", "officina"),
        threads=document.get("threads", 8),
        log_level=document.get("log_level", "INFO"),
    )
