"""The profile catalogue: one declaration (officina.yaml `profiles`) for every place that
needs it: the spawn form, the server-side check of a submitted form, the local spawner's
limits and GPU pool, and KubeSpawner's profile list (kubernetes.py).

A profile is offered to a user only if one of the user's IAM groups is in the profile's
`groups` (or the list is empty). The form is a convenience: `choose()` re-checks every
submitted value, so a forged profile name or an out-of-range number gets a clear refusal.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class ChoiceError(ValueError):
    """A submitted spawn form that cannot be honoured; the message is shown to the user."""


def open_to(required, groups) -> bool:
    """The platform's one rule for group-restricted entries (profiles, Dask limits, resource
    quotas): no groups named means everyone, otherwise one of the user's groups must be named."""
    return not required or bool(set(required) & set(groups or ()))


def parse_bytes(value: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGT])", value)
    if not match:
        raise ValueError(f"{value!r} is not a size like 512M or 2G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(value: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if value >= _UNITS[unit] and value % (_UNITS[unit] // 1024 or 1) == 0:
            number = value / _UNITS[unit]
            return f"{number:g}{unit}"
    return str(value)


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str
    default: bool
    image: str
    environment: str | None
    cpu_guarantee: float
    cpu_limit: float
    mem_guarantee: int
    mem_limit: int
    gpu_count: int
    gpu_model: str | None
    gpu_mig: str | None
    groups: tuple[str, ...]
    env: dict = field(default_factory=dict)
    volumes: tuple[dict, ...] = ()

    @classmethod
    def from_settings(cls, raw: dict) -> Profile:
        return cls(
            slug=raw["slug"],
            display_name=raw["display_name"],
            description=raw["description"],
            default=raw["default"],
            image=raw["image"],
            environment=raw["environment"],
            cpu_guarantee=float(raw["cpu"]["guarantee"]),
            cpu_limit=float(raw["cpu"]["limit"]),
            mem_guarantee=parse_bytes(raw["memory"]["guarantee"]),
            mem_limit=parse_bytes(raw["memory"]["limit"]),
            gpu_count=raw["gpus"]["count"],
            gpu_model=raw["gpus"]["model"],
            gpu_mig=raw["gpus"]["mig"],
            groups=tuple(raw["groups"]),
            env=dict(raw["env"]),
            volumes=tuple(raw["volumes"]),
        )

    @property
    def needs_gpu(self) -> bool:
        return self.gpu_count > 0

    def allows(self, groups) -> bool:
        return open_to(self.groups, groups)

    @property
    def summary(self) -> str:
        cores = f"{self.cpu_limit:g} core{'' if self.cpu_limit == 1 else 's'}"
        parts = [cores, f"{format_bytes(self.mem_limit)}B memory"]
        if self.needs_gpu:
            parts.append(f"{self.gpu_count} GPU{'s' if self.gpu_count > 1 else ''}"
                         + (f" ({self.gpu_model})" if self.gpu_model else ""))
        return ", ".join(parts)


def check_catalogue(raw_profiles: list[dict]) -> str | None:
    """What a JSON schema cannot say about the catalogue; None when it is consistent."""
    seen = set()
    defaults = 0
    for i, raw in enumerate(raw_profiles):
        key = f"profiles[{i}]"
        if raw["slug"] in seen:
            return f"{key}.slug: {raw['slug']!r} is used by an earlier profile"
        seen.add(raw["slug"])
        defaults += bool(raw["default"])
        if raw["cpu"]["guarantee"] > raw["cpu"]["limit"]:
            return f"{key}.cpu.guarantee: {raw['cpu']['guarantee']} is more than cpu.limit {raw['cpu']['limit']}"
        if parse_bytes(raw["memory"]["guarantee"]) > parse_bytes(raw["memory"]["limit"]):
            return f"{key}.memory.guarantee: {raw['memory']['guarantee']} is more than memory.limit {raw['memory']['limit']}"
        if parse_bytes(raw["memory"]["limit"]) < 256 * 1024**2:
            return f"{key}.memory.limit: {raw['memory']['limit']} is too small for a JupyterLab session (at least 256M)"
        for j, volume in enumerate(raw["volumes"]):
            if volume["name"] == "home":
                return f"{key}.volumes[{j}].name: 'home' is reserved for the user's home volume"
        if raw["gpus"]["mig"] and raw["gpus"]["count"] < 1:
            return f"{key}.gpus.mig: needs gpus.count of at least 1"
    if defaults > 1:
        return "profiles: more than one profile has default: true"
    return None


@dataclass
class Choice:
    """A profile as one user sees it in the form."""

    profile: Profile
    available: bool
    note: str = ""


@dataclass
class Selection:
    """A validated spawn request."""

    profile: Profile
    mem_limit: int

    def as_options(self) -> dict:
        return {"profile": self.profile.slug, "mem_limit": self.mem_limit}


class Catalogue:
    def __init__(self, raw_profiles: list[dict]):
        self.profiles = [Profile.from_settings(p) for p in raw_profiles]
        self.by_slug = {p.slug: p for p in self.profiles}

    def visible(self, groups) -> list[Profile]:
        return [p for p in self.profiles if p.allows(groups)]

    def default_for(self, groups) -> Profile | None:
        visible = self.visible(groups)
        return next((p for p in visible if p.default), visible[0] if visible else None)

    def choices(self, groups, gpu_free: dict[str | None, tuple[int, int]] | None, local: bool) -> list[Choice]:
        """The user's profiles with availability. `gpu_free` maps a model (None: any) to
        (free, total); only local sessions know the inventory."""
        choices = []
        for profile in self.visible(groups):
            if not profile.needs_gpu or not local:
                choices.append(Choice(profile, True))
                continue
            free, total = (gpu_free or {}).get(profile.gpu_model, (0, 0))
            if total == 0:
                what = f"{profile.gpu_model} GPUs" if profile.gpu_model else "GPUs"
                choices.append(Choice(profile, False, f"This machine has no {what}."))
            elif free < profile.gpu_count:
                choices.append(Choice(profile, False, f"No GPU free right now: {free} of {total} free. Try again later."))
            else:
                choices.append(Choice(profile, True, f"{free} of {total} GPUs free"))
        return choices

    def choose(self, form: dict, groups) -> Selection:
        """Check a submitted form (values are lists, as tornado delivers them)."""
        slug = _single(form, "profile")
        if slug is None:
            profile = self.default_for(groups)
            if profile is None:
                raise ChoiceError("No profile is available to your IAM groups on this platform.")
        else:
            profile = self.by_slug.get(slug)
            if profile is None:
                raise ChoiceError(f"Unknown profile {slug[:64]!r}.")
            if not profile.allows(groups):
                raise ChoiceError(
                    f"Profile {profile.display_name!r} is reserved for members of "
                    f"{', '.join(profile.groups)}; your groups: {', '.join(groups) or 'none'}."
                )
        mem_limit = profile.mem_limit
        raw_memory = _single(form, "memory_gb")
        if raw_memory not in (None, ""):
            try:
                gigabytes = float(raw_memory)
            except ValueError:
                raise ChoiceError(f"Memory: {raw_memory[:32]!r} is not a number of GB.") from None
            low, high = profile.mem_guarantee / 1024**3, profile.mem_limit / 1024**3
            if not math.isfinite(gigabytes) or not low <= gigabytes <= high:
                raise ChoiceError(
                    f"Memory: {raw_memory[:32]} GB is outside what {profile.display_name!r} allows "
                    f"({low:g} to {high:g} GB)."
                )
            mem_limit = int(gigabytes * 1024**3)
        return Selection(profile, mem_limit)

    def form_html(self, choices: list[Choice], default: Profile | None) -> str:
        """The spawn form: one radio per visible profile, availability, a memory field."""
        if not choices:
            return ('<div class="alert alert-danger">No profile is available to your IAM groups '
                    'on this platform. Ask the platform administrators.</div>')
        rows = []
        for choice in choices:
            p = choice.profile
            checked = " checked" if default is not None and p.slug == default.slug and choice.available else ""
            disabled = "" if choice.available else " disabled"
            note = f'<div class="officina-profile-note">{html.escape(choice.note)}</div>' if choice.note else ""
            rows.append(
                f'<label class="officina-profile" data-profile="{html.escape(p.slug)}">'
                f'<input type="radio" name="profile" value="{html.escape(p.slug)}"{checked}{disabled} '
                f'data-mem-min="{p.mem_guarantee / 1024**3:g}" data-mem-max="{p.mem_limit / 1024**3:g}"> '
                f'<strong>{html.escape(p.display_name)}</strong> '
                f'<span class="officina-profile-summary">{html.escape(p.summary)}</span>'
                f'<div>{html.escape(p.description)}</div>{note}</label>'
            )
        return (
            '<div class="officina-profiles">' + "".join(rows) + "</div>"
            '<label for="officina-memory">Memory limit in GB (optional, within the profile\'s range)</label>'
            '<input id="officina-memory" class="form-control" type="number" step="0.5" name="memory_gb">'
        )


def _single(form: dict, name: str) -> str | None:
    values = form.get(name)
    if values is None:
        return None
    if isinstance(values, (list, tuple)):
        if len(values) != 1:
            raise ChoiceError(f"{name}: expected one value, got {len(values)}.")
        values = values[0]
    return str(values).strip()
