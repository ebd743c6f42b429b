"""Resource kinds as declared in officina.yaml (`resources.<kind>.options`), and quotas.

A kind's declaration is the only description of its options: the engine validates requests
with it, the API serves it (`GET .../api/kinds`) as a JSON schema, and the clusters widget
builds its form from that answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..profiles import open_to, parse_bytes

GIB = 2**30


class OptionError(ValueError):
    """A request value out of the declaration; the message names the field."""


class QuotaError(Exception):
    """Over the user's group quota; the message names the limit."""


@dataclass(frozen=True)
class NumberOption:
    name: str
    label: str
    default: float
    minimum: float
    maximum: float
    integer: bool

    def check(self, value, groups=()) -> float:
        if value is None:
            return self.default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            raise OptionError(f"{self.name}: {'a whole number' if self.integer else 'a number'} is needed, got {value!r}")
        if value < self.minimum:
            raise OptionError(f"{self.name}: at least {self.minimum:g}, got {value:g}")
        if value > self.maximum:
            raise OptionError(f"{self.name}: at most {self.maximum:g}, got {value:g}")
        return value

    def schema(self) -> dict:
        return {"type": "integer" if self.integer else "number", "title": self.label,
                "default": self.default, "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True)
class ChoiceOption:
    name: str
    label: str
    choices: tuple[str, ...]
    default: str

    def check(self, value, groups=()) -> str:
        if value is None:
            return self.default
        if value not in self.choices:
            raise OptionError(f"{self.name}: one of {', '.join(self.choices)}, got {value!r}")
        return value

    def schema(self) -> dict:
        return {"type": "string", "title": self.label, "enum": list(self.choices), "default": self.default}


@dataclass(frozen=True)
class FolderOption:
    """A folder inside the user's home, relative to it ("" = none)."""

    name: str
    label: str

    def check(self, value, groups=()) -> str:
        if value is None or value == "":
            return ""
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]*", value) \
                or any(part in ("", ".", "..") for part in value.rstrip("/").split("/")):
            raise OptionError(f"{self.name}: a folder inside your home, like models/my_model, got {value!r}")
        return value.rstrip("/")

    def schema(self) -> dict:
        return {"type": "string", "title": self.label, "default": ""}


@dataclass(frozen=True)
class NotebookOption:
    """A notebook inside the user's home, relative to it (required)."""

    name: str
    label: str

    def check(self, value, groups=()) -> str:
        if value is None or value == "":
            raise OptionError(f"{self.name}: which notebook of your home to publish, like apps/digits-app.ipynb")
        path = FolderOption(self.name, self.label).check(value)
        if not path.endswith(".ipynb"):
            raise OptionError(f"{self.name}: a notebook (.ipynb) inside your home, got {value!r}")
        return path

    def schema(self) -> dict:
        return {"type": "string", "title": self.label, "pattern": r"\.ipynb$"}


@dataclass(frozen=True)
class GroupsOption:
    """Some of the user's own IAM groups (who else may use the resource)."""

    name: str
    label: str

    def check(self, value, groups=()) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
            raise OptionError(f"{self.name}: a list of group names is needed, got {value!r}")
        foreign = sorted(set(value) - set(groups))
        if foreign:
            raise OptionError(f"{self.name}: you can share only with groups you are in "
                              f"({', '.join(sorted(groups)) or 'none'}), not {', '.join(foreign)}")
        return sorted(set(value))

    def schema(self) -> dict:
        return {"type": "array", "title": self.label, "items": {"type": "string"}, "uniqueItems": True, "default": []}


@dataclass(frozen=True)
class KindSpec:
    kind: str
    title: str
    workers: NumberOption
    options: tuple   # NumberOption (worker_cores, worker_memory in GiB), and per kind others

    @classmethod
    def from_settings(cls, kind: str, title: str, raw: dict) -> KindSpec:
        w, c, m = raw["workers"], raw["worker_cores"], raw["worker_memory"]
        return cls(
            kind=kind, title=title,
            workers=NumberOption("workers", "Workers", w["default"], 0, w["max"], True),
            options=(
                NumberOption("worker_cores", "Cores per worker", c["default"], 1, c["max"], True),
                NumberOption("worker_memory", "Memory per worker (GiB)", m["default"], 0.5, m["max"], False),
            ),
        )

    @classmethod
    def for_models(cls, raw: dict) -> KindSpec:
        """DEEPaaS servers: one server each, a shipped model or the user's own package."""
        c, m = raw["options"]["worker_cores"], raw["options"]["worker_memory"]
        names = tuple(entry["name"] for entry in raw["catalogue"])
        return cls(
            kind="model", title="DEEPaaS model server",
            workers=NumberOption("workers", "Servers", 1, 1, 1, True),
            options=(
                ChoiceOption("model", "Model", names, names[0]),
                FolderOption("package", "Your own model package (a folder in your home; empty: the model above)"),
                GroupsOption("share_with", "Groups that may use it"),
                NumberOption("worker_cores", "Cores", c["default"], 1, c["max"], True),
                NumberOption("worker_memory", "Memory (GiB)", m["default"], 0.5, m["max"], False),
            ),
        )

    @classmethod
    def for_apps(cls, raw: dict) -> KindSpec:
        """Published Voila apps: one notebook rendered for its owner and the chosen groups."""
        c, m = raw["options"]["worker_cores"], raw["options"]["worker_memory"]
        return cls(
            kind="app", title="Published Voila app",
            workers=NumberOption("workers", "Servers", 1, 1, 1, True),
            options=(
                NotebookOption("notebook", "Notebook of your home to publish"),
                GroupsOption("share_with", "Groups that may open it"),
                NumberOption("worker_cores", "Cores", c["default"], 1, c["max"], True),
                NumberOption("worker_memory", "Memory (GiB)", m["default"], 0.5, m["max"], False),
            ),
        )

    def validate(self, request: dict, groups=()) -> tuple[dict, int]:
        if not isinstance(request, dict):
            raise OptionError("the request must be a JSON object")
        known = {o.name for o in self.options} | {"workers", "kind"}
        unknown = sorted(set(request) - known)
        if unknown:
            raise OptionError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {self.kind} "
                              f"(known: {', '.join(sorted(known - {'kind'}))})")
        options = {o.name: o.check(request.get(o.name), groups) for o in self.options}
        return options, int(self.workers.check(request.get("workers")))

    def validate_workers(self, value) -> int:
        return int(self.workers.check(value if value is not None else -1))

    def cores(self, options: dict, workers: int) -> float:
        return workers * options["worker_cores"]

    def memory(self, options: dict, workers: int) -> float:
        return workers * options["worker_memory"]

    def schema(self) -> dict:
        props = {"workers": self.workers.schema(), **{o.name: o.schema() for o in self.options}}
        return {"title": self.title, "type": "object", "additionalProperties": False, "properties": props}


@dataclass(frozen=True)
class Quota:
    groups: tuple[str, ...]
    max_resources: int
    max_cores: float
    max_memory_gib: float

    @property
    def source(self) -> str:
        return "the quota for everyone" if not self.groups else "the quota of group " + " / ".join(self.groups)


def quota_for(limits: list[dict], groups) -> Quota:
    for raw in limits:
        if open_to(raw.get("groups"), groups):
            return Quota(tuple(raw.get("groups", ())), raw["max_resources"], raw["max_cores"],
                         parse_bytes(raw["max_memory"]) / GIB)
    return Quota(("(none of yours)",), 0, 0, 0)
