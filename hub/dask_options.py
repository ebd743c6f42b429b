"""What a user may ask of a new Dask cluster, and how much they may use: `dask.options` and
`dask.limits` of officina.yaml, turned into dask-gateway `Options` per user.

Everything that shows or checks cluster options reads them from here through the gateway:
its `/api/v1/options` (dask-gateway's own form and `Gateway.cluster_options()`), the Officina
widget, and the gateway's parsing of a request (a value out of range is a 422 naming the field
and the limit). Totals across a user's clusters are checked by the backend
(`officina.hub.dask_gateway`), which is the only place that sees all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dask_gateway_server.options import Float, Integer, Options, Select

from .profiles import Catalogue, Profile, open_to, parse_bytes

GIB = 2**30
SCHEDULER_CORES = 1
SCHEDULER_MEMORY = GIB


@dataclass(frozen=True)
class GroupLimit:
    groups: tuple[str, ...]
    max_clusters: int
    max_cores: int
    max_memory: int  # bytes

    @classmethod
    def from_settings(cls, raw: dict) -> GroupLimit:
        return cls(tuple(raw.get("groups", ())), raw["max_clusters"], raw["max_cores"], parse_bytes(raw["max_memory"]))

    def applies(self, groups) -> bool:
        return open_to(self.groups, groups)

    @property
    def source(self) -> str:
        """How a message names this limit: the group(s) it is for."""
        return "the limit for everyone" if not self.groups else "the limit of group " + " / ".join(self.groups)


NO_ENTRY = GroupLimit((), 0, 0, 0)


def limit_for(raw_limits: list[dict], groups) -> GroupLimit:
    """The first `dask.limits` entry that applies to these groups; none applies: nothing allowed."""
    for raw in raw_limits:
        limit = GroupLimit.from_settings(raw)
        if limit.applies(groups):
            return limit
    return NO_ENTRY


class _Bounded:
    """dask-gateway's number fields, with messages a person can act on."""

    why_max = ""

    def validate(self, x):
        x = self._check_type(x)
        if self.min is not None and x < self.min:
            raise ValueError(f"{self.field}: at least {self.min:g}, got {x:g}")
        if self.max is not None and x > self.max:
            raise ValueError(f"{self.field}: at most {self.max:g}{self.why_max}, got {x:g}")
        return x


class BoundedInteger(_Bounded, Integer):
    def __init__(self, *args, why_max: str = "", **kwargs):
        self.why_max = why_max
        super().__init__(*args, **kwargs)

    def _check_type(self, x):
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"{self.field}: a whole number is needed, got {x!r}")
        return x


class BoundedFloat(_Bounded, Float):
    def __init__(self, *args, why_max: str = "", **kwargs):
        self.why_max = why_max
        super().__init__(*args, **kwargs)

    def _check_type(self, x):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{self.field}: a number is needed, got {x!r}")
        return float(x)


def software_profiles(raw_profiles: list[dict], groups) -> list[Profile]:
    """The CPU profiles of the catalogue this user may run: what their workers may run."""
    return [p for p in Catalogue(raw_profiles).visible(groups) if not p.needs_gpu]


@dataclass
class ClusterOptionsFactory:
    """`c.Backend.cluster_options`: called by the gateway with the requesting user."""

    options: dict           # dask.options
    limits: list[dict]      # dask.limits
    profiles: list[dict]    # the profile catalogue
    kubernetes: bool
    platform_bin: Path      # the platform's environment (profiles with no environment of their own)
    # What every worker needs beside its profile's (the data federation's addresses and CA).
    environment: dict = field(default_factory=dict)

    def __call__(self, user) -> Options:
        groups = sorted(user.groups)
        limit = limit_for(self.limits, groups)
        profiles = software_profiles(self.profiles, groups)
        if not profiles:
            # Nothing to run workers with: the form still renders, every request is refused.
            profiles = []
        cores, memory = self.options["worker_cores"], self.options["worker_memory"]
        max_cores = max(1, min(cores["max"], limit.max_cores))
        max_memory = max(0.25, min(memory["max"], limit.max_memory / GIB))
        why = f" ({limit.source})"
        default_profile = next((p for p in profiles if p.default), profiles[0] if profiles else None)
        fields = [
            Select(
                "software",
                [p.slug for p in profiles] or ["none"],
                default=default_profile.slug if default_profile else "none",
                label="Software (profile)",
            ),
            BoundedInteger("worker_cores", default=min(cores["default"], max_cores), min=1, max=max_cores,
                           label="Worker cores", why_max=why if max_cores < cores["max"] else ""),
            BoundedFloat("worker_memory", default=min(float(memory["default"]), max_memory), min=0.25,
                         max=max_memory, label="Worker memory (GiB)",
                         why_max=why if max_memory < memory["max"] else ""),
            BoundedInteger("adaptive_minimum", default=0, min=0, max=self.options["adaptive_maximum"],
                           label="Adaptive minimum workers"),
            BoundedInteger("adaptive_maximum", default=0, min=0, max=self.options["adaptive_maximum"],
                           label="Adaptive maximum workers (0: scale by hand)"),
        ]
        by_slug = {p.slug: p for p in profiles}
        return Options(*fields, handler=lambda chosen, user: self.configuration(chosen, by_slug, limit))

    def configuration(self, chosen: dict, profiles: dict[str, Profile], limit: GroupLimit) -> dict:
        """The ClusterConfig overrides for the chosen options (refusals raise ValueError)."""
        if limit.max_clusters == 0 or limit is NO_ENTRY:
            raise ValueError("your groups allow no Dask clusters (no entry of dask.limits applies to you)")
        profile = profiles.get(chosen["software"])
        if profile is None:
            raise ValueError("software: no profile you may use can run Dask workers")
        low, high = chosen["adaptive_minimum"], chosen["adaptive_maximum"]
        if high and low > high:
            raise ValueError(f"adaptive_minimum ({low}) is above adaptive_maximum ({high})")
        if not high and low:
            raise ValueError("adaptive_minimum needs an adaptive_maximum (0 means scaling by hand)")
        cores, memory = chosen["worker_cores"], int(chosen["worker_memory"] * GIB)
        if low and (low * cores > limit.max_cores or low * memory > limit.max_memory):
            raise ValueError(
                f"adaptive_minimum: {low} workers of {cores} cores and {chosen['worker_memory']:g} GiB "
                f"exceed {limit.source} ({limit.max_cores} cores, {limit.max_memory / GIB:g} GiB)"
            )
        config = {
            "worker_cores": cores,
            "worker_threads": cores,
            "worker_memory": memory,
            "scheduler_cores": SCHEDULER_CORES,
            "scheduler_memory": SCHEDULER_MEMORY,
            # The gateway's per-cluster caps (it trims a scale request to them, with a message);
            # the scheduler's share is on top of the user's worker allowance.
            "cluster_max_cores": limit.max_cores + SCHEDULER_CORES,
            "cluster_max_memory": limit.max_memory + SCHEDULER_MEMORY,
        }
        if self.kubernetes:
            config["image"] = profile.image
        else:
            bin_dir = Path(profile.environment) / "bin" if profile.environment else self.platform_bin
            config["scheduler_cmd"] = [str(bin_dir / "dask"), "scheduler"]
            config["worker_cmd"] = [str(bin_dir / "dask"), "worker"]
            config["environment"] = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", **self.environment, **profile.env}
        return config


def check_dask_settings(dask: dict) -> str | None:
    """Consistency the schema cannot express; a message naming the key, or None."""
    for key in ("worker_cores", "worker_memory"):
        option = dask["options"][key]
        if option["default"] > option["max"]:
            return f"dask.options.{key}: default {option['default']:g} is above max {option['max']:g}"
    for i, raw in enumerate(dask["limits"]):
        try:
            parse_bytes(raw["max_memory"])
        except ValueError as exc:
            return f"dask.limits[{i}].max_memory: {exc}"
    return None
