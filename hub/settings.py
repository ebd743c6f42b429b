"""The platform configuration: officina.yaml, validated against settings.schema.yaml.

The schema is the single declaration of every setting: it validates the file, supplies the
embedded defaults and generates the reference in the README (`officina config --docs`).
Checks a JSON schema cannot express (two components on one port, a real issuer without a
client secret) live in `_check_consistency`, with messages of the same shape.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class SettingsError(Exception):
    """The configuration cannot be used; the message names the key and the reason."""


def load_schema() -> dict:
    text = resources.files("officina.hub").joinpath("settings.schema.yaml").read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_class):
    """A validator that also fills in each property's `default` while it walks the document."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        # jsonschema reports the parent; name the offending key itself.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(filter(None, [path, extra[0] if extra else ""]))
    return path or "(top level)"


def _reason(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown key (allowed here: {allowed})"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"must be of type {expected}, got {type(error.instance).__name__} {error.instance!r}"
    if error.validator == "pattern":
        return f"{error.instance!r} does not have the required form ({error.schema.get('description') or error.validator_value})"
    return error.message


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/officina")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "officina"


@dataclass(frozen=True)
class Settings:
    """Validated settings with every default filled in; `raw` is the full document."""

    raw: dict
    source: str

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def state_dir(self) -> Path:
        return Path(self.raw["state_dir"])

    @property
    def uses_standin(self) -> bool:
        return not self.raw["iam"]["issuer"]

    @property
    def issuer(self) -> str:
        if self.uses_standin:
            return f"http://127.0.0.1:{self.raw['iam']['standin']['port']}/"
        return self.raw["iam"]["issuer"]

    @property
    def public_url(self) -> str:
        """scheme://host:port/base_url/ as a browser reaches the platform."""
        hub = self.raw["hub"]
        if hub["public_url"]:
            root = hub["public_url"].rstrip("/")
        else:
            host = "127.0.0.1" if hub["ip"] in ("0.0.0.0", "", "::") else hub["ip"]
            root = f"http://{host}:{hub['port']}"
        return root + hub["base_url"]

    @property
    def run_as_system_accounts(self) -> bool:
        mode = self.raw["sessions"]["run_as"]
        if mode == "auto":
            return os.geteuid() == 0
        return mode == "system-accounts"


def _check_consistency(doc: dict, source: str) -> None:
    hub, iam = doc["hub"], doc["iam"]
    ports = {
        "hub.port": hub["port"],
        "hub.internal_port": hub["internal_port"],
        "hub.proxy_api_port": hub["proxy_api_port"],
    }
    if not iam["issuer"]:
        ports["iam.standin.port"] = iam["standin"]["port"]
    if doc["dask"]["enabled"]:
        ports["dask.port"] = doc["dask"]["port"]
        ports["dask.api_port"] = doc["dask"]["api_port"]
        ports["dask.dashboards_port"] = doc["dask"]["dashboards_port"]
    if doc["resources"]["enabled"]:
        ports["resources.port"] = doc["resources"]["port"]
    if doc["condor"]["enabled"] is not False:
        ports["condor.port"] = doc["condor"]["port"]
    if doc["data"]["enabled"] is not False:
        from .data.sites import data_ports

        ports.update(data_ports(doc["data"]))
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            raise SettingsError(f"{source}: {key}: port {port} is already used by {seen[port]}")
        seen[port] = key
    if iam["issuer"] and not iam["client_secret_file"]:
        raise SettingsError(
            f"{source}: iam.client_secret_file: required when iam.issuer is set "
            "(the hub needs its client secret to talk to a real IAM)"
        )
    for key, value in (
        ("iam.client_secret_file", iam["client_secret_file"]),
        ("iam.standin.users_file", iam["standin"]["users_file"]),
    ):
        if value and not Path(value).expanduser().is_file():
            raise SettingsError(f"{source}: {key}: file {value!r} does not exist")
    sessions = doc["sessions"]
    if sessions["run_as"] == "platform-account" and os.geteuid() == 0:
        raise SettingsError(
            f"{source}: sessions.run_as: 'platform-account' while running as root would give every "
            "session root; use 'system-accounts' (or 'auto'), or run Officina as an ordinary account"
        )
    if sessions["run_as"] == "system-accounts" and os.geteuid() != 0:
        raise SettingsError(
            f"{source}: sessions.run_as: 'system-accounts' needs root to create accounts "
            "and switch to them; run as root or use 'platform-account'"
        )
    if sessions["idle_timeout"] and sessions["cull_every"] > sessions["idle_timeout"]:
        raise SettingsError(
            f"{source}: sessions.cull_every: {sessions['cull_every']} s is longer than "
            f"sessions.idle_timeout ({sessions['idle_timeout']} s), so idle sessions would outlive their timeout"
        )
    from .profiles import check_catalogue

    from .dask_options import check_dask_settings

    from .data.sites import check_data_settings

    problem = check_catalogue(doc["profiles"]) or check_dask_settings(doc["dask"]) or check_data_settings(doc["data"])
    if problem:
        raise SettingsError(f"{source}: {problem}")
    if doc["data"]["enabled"] is True and doc["iam"]["groups_claim"] != "wlcg.groups":
        # The sites (SciTokens) read only WLCG-profile tokens: their nbf and wlcg.groups.
        raise SettingsError(f"{source}: data.enabled: the data sites accept WLCG-profile tokens only, but "
                            f"iam.groups_claim is {doc['iam']['groups_claim']!r}: use wlcg.groups (and a wlcg "
                            "client at the IAM: iam.standin.token_profile: wlcg), or data.enabled: false")
    state = Path(doc["state_dir"])
    existing = next((p for p in [state, *state.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"{source}: state_dir: {str(state)!r} cannot be created here ({existing} is not a writable directory)")


def load_settings(path: str | os.PathLike | None) -> Settings:
    """Read, validate and complete the configuration; embedded defaults need no file."""
    if path is None:
        doc, source = {}, "embedded defaults"
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SettingsError(f"{source}: cannot read the configuration file: {exc.strerror}") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise SettingsError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise SettingsError(f"{source}: (top level): must be a mapping of settings, got {type(doc).__name__}")

    doc = copy.deepcopy(doc)
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        first = errors[0]
        raise SettingsError(f"{source}: {_key_path(first)}: {_reason(first)}")
    doc.setdefault("state_dir", str(default_state_dir()))
    doc["state_dir"] = str(Path(doc["state_dir"]).expanduser().absolute())
    _check_consistency(doc, source)
    return Settings(raw=doc, source=source)


def reference_markdown() -> str:
    """The configuration reference, generated from the schema (kept in the README)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(schema: dict, prefix: str) -> None:
        for name, sub in schema.get("properties", {}).items():
            key = f"{prefix}{name}"
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, key + ".")
                continue
            items = sub.get("items", {})
            if "properties" in items:
                # A list of objects (the profile catalogue, the GPU inventory): the list's
                # own row, then one row per field of its entries.
                rows.append(f"| `{key}` | list | see example | {' '.join(sub.get('description', '').split())} |")
                walk(items, key + "[].")
                continue
            kind = sub.get("type") or "one of " + ", ".join(map(str, sub.get("enum", [])))
            kind = " or ".join(kind) if isinstance(kind, list) else kind
            default = sub.get("default", "")
            rows.append(f"| `{key}` | {kind} | `{default}` | {' '.join(sub.get('description', '').split())} |")

    walk(load_schema(), "")
    return "\n".join(rows)
