"""CPU and memory limits of local sessions: cgroups where the hub may write them, resource
limits of the process otherwise.

Three mechanisms, picked once at start and reported by `officina up` and in each session
(`/officina/api/status`, `$OFFICINA_LIMITS`):

- `cgroup2`: a child group per session under the hub's own cgroup (unified hierarchy):
  `memory.max` and `cpu.max` cover the session and every process it starts.
- `cgroup1`: the same with the v1 `memory` and `cpu` controllers
  (`memory.limit_in_bytes`, `cpu.cfs_quota_us`).
- `rlimit`: no writable cgroup (an unprivileged laptop): the address-space limit
  (RLIMIT_AS) of each session process and a CPU affinity of ceil(limit) cores. Weaker: it
  is per process, not per session, and counts virtual rather than resident memory.

In every mode the kernel also gets an address-space limit (officina.lab.kernel), so that a
cell allocating past the profile's memory gets a MemoryError that says why, instead of the
whole kernel being killed.
"""

from __future__ import annotations

import math
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000


def _own_cgroup(controller: str | None) -> Path | None:
    """The hub's own cgroup folder for a v1 controller (or the v2 one for None)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (controller and controller in controllers.split(",")):
            base = CGROUP_ROOT if controller is None else CGROUP_ROOT / controller
            return base / path.lstrip("/")
    return None


def _writable_dir(path: Path | None) -> bool:
    if path is None or not path.is_dir():
        return False
    probe = path / f"officina-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def detect_mode() -> str:
    v2 = _own_cgroup(None)
    if v2 is not None and (CGROUP_ROOT / "cgroup.controllers").exists():
        controllers = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
        if {"memory", "cpu"} <= set(controllers) and _writable_dir(v2):
            return "cgroup2"
    if _writable_dir(_own_cgroup("memory")) and _writable_dir(_own_cgroup("cpu")):
        return "cgroup1"
    return "rlimit"


@dataclass
class SessionLimits:
    """The limits of one session, applied by `preexec()` in the session's first process."""

    mode: str
    key: str
    mem_limit: int
    cpu_limit: float

    def _groups(self) -> list[Path]:
        name = f"officina-{self.key}"
        if self.mode == "cgroup2":
            return [_own_cgroup(None) / name]
        if self.mode == "cgroup1":
            return [_own_cgroup("memory") / name, _own_cgroup("cpu") / name]
        return []

    def prepare(self) -> None:
        """Create the session's cgroups and write their limits (in the hub, as root)."""
        for group in self._groups():
            group.mkdir(exist_ok=True)
        if self.mode == "cgroup2":
            group = self._groups()[0]
            (group / "memory.max").write_text(str(self.mem_limit))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")  # a limit that swap cannot dodge
            quota = int(self.cpu_limit * CFS_PERIOD_US)
            (group / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
        elif self.mode == "cgroup1":
            memory, cpu = self._groups()
            (memory / "memory.limit_in_bytes").write_text(str(self.mem_limit))
            (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(int(self.cpu_limit * CFS_PERIOD_US)))

    def preexec(self) -> None:
        """In the session's process, before it drops root: join the cgroups, or set rlimits."""
        if self.mode in ("cgroup1", "cgroup2"):
            for group in self._groups():
                # "0" is the writing process itself, in both hierarchies.
                with open(group / "cgroup.procs", "w") as procs:
                    procs.write("0")
            return
        resource.setrlimit(resource.RLIMIT_AS, (self.mem_limit, self.mem_limit))
        cores = sorted(os.sched_getaffinity(0))
        wanted = max(1, min(len(cores), math.ceil(self.cpu_limit)))
        if wanted < len(cores):
            # Spread sessions over the cores instead of stacking them all on the first ones.
            start = hash(self.key) % len(cores)
            os.sched_setaffinity(0, {cores[(start + i) % len(cores)] for i in range(wanted)})

    def cleanup(self) -> None:
        """After the session stopped: end what is left in its cgroups, then remove them."""
        for group in self._groups():
            procs = group / "cgroup.procs"
            try:
                for pid in procs.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            try:
                group.rmdir()
            except OSError:
                pass

    def oom_kills(self) -> int | None:
        """How often the kernel's OOM killer struck in this session (cgroups only)."""
        for group in self._groups()[:1]:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    for line in (group / name).read_text().splitlines():
                        if line.startswith("oom_kill "):
                            return int(line.split()[1])
                except OSError:
                    continue
        return None
