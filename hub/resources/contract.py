"""The contract between the resource manager and its backends (Spark, HTCondor workers, and
DEEPaaS servers next), and the records it keeps.

One engine (officina.hub.resources.manager) does everything common: authentication and
scopes, per-group quotas, options validation, persistence, idle stops, listing. A backend
only knows how to make its kind of resource exist, grow, shrink and disappear, on one
substrate (local processes, or Kubernetes objects rendered as pure functions).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Protocol


class Phase(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class Owner:
    """Who a resource is for: the hub user, their system account, their home and token file."""

    name: str                 # hub username
    groups: tuple[str, ...]
    account: str | None       # system account to run as (root mode), None: the platform's own
    home: str                 # the user's home in this platform's state
    token_file: str           # their fresh IAM access token (kept by the session)


@dataclass
class Resource:
    """One resource, as persisted (JSON) in the manager's state; `state` belongs to the backend."""

    id: str                   # short random id, unique across kinds
    kind: str                 # "spark", ...
    owner: str                # hub username
    options: dict             # validated options (the kind's declaration)
    workers: int              # workers asked for
    phase: Phase = Phase.STARTING
    message: str = ""         # why FAILED, or what is happening
    created: float = 0.0
    last_activity: float = 0.0
    state: dict = field(default_factory=dict)   # backend's: pids, ports, work dir...
    endpoints: dict = field(default_factory=dict)  # for the user: {"master": "spark://...", "ui": "..."}

    def to_json(self) -> dict:
        data = asdict(self)
        data["phase"] = self.phase.value
        return data

    @classmethod
    def from_json(cls, data: dict) -> Resource:
        return cls(**{**data, "phase": Phase(data["phase"])})


class Backend(Protocol):
    """What a kind's backend implements. Methods may block for a few seconds (the manager runs
    them in a thread); they raise BackendError with a message for the user when they fail."""

    kind: str

    def start(self, resource: Resource, owner: Owner) -> None:
        """Make it exist with `resource.workers` workers; fill `state` and `endpoints`."""

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        """Bring the worker count to `workers` (update `state`)."""

    def stop(self, resource: Resource) -> None:
        """Make it disappear (every process/object it made); idempotent."""

    def alive(self, resource: Resource) -> tuple[bool, int, str]:
        """(still running?, workers running, message) — used after a manager restart and
        periodically: a resource whose processes died is marked FAILED with the message."""

    def busy(self, resource: Resource) -> bool:
        """Whether it is in use now (running jobs/apps): idle stops only what is not busy."""


class BackendError(Exception):
    """A failure the user should read (shown as is)."""
