"""The host's GPUs, handed out to local sessions so that two sessions never share one.

The allocation table is a JSON file in the state directory, changed under an exclusive file
lock, so it survives a hub restart (a restarted hub's sessions keep their GPUs) and stays
right if a session dies without the hub noticing: a claim whose session process is gone is
released at the next allocation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

# A claim made for a session that has not started yet is kept this long.
STARTING_GRACE_SECONDS = 15 * 60


@dataclass(frozen=True)
class GPU:
    index: int
    model: str


class NoGPUFree(Exception):
    """Every matching GPU is in use (or there is none); the message says which."""


def detect_gpus() -> list[GPU]:
    """The host's GPUs according to nvidia-smi; none when it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            # "NVIDIA A100-SXM4-80GB" -> "a100": the model name profiles use.
            model = name.strip().lower().removeprefix("nvidia ").split("-")[0].split()[0]
            gpus.append(GPU(int(index), model))
    return gpus


class GPUPool:
    def __init__(self, table: Path, inventory: list[GPU]):
        self.table = Path(table)
        self.inventory = list(inventory)

    @contextlib.contextmanager
    def _locked(self):
        self.table.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.table, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            text = handle.read()
            claims = json.loads(text) if text.strip() else {}
            claims = {k: v for k, v in claims.items() if _alive(v)}
            yield claims
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(claims, indent=1))

    def _matching(self, model: str | None) -> list[GPU]:
        return [g for g in self.inventory if model is None or g.model == model]

    def availability(self) -> dict[str | None, tuple[int, int]]:
        """(free, total) per model, and for None (any model)."""
        with self._locked() as claims:
            used = {i for claim in claims.values() for i in claim["gpus"]}
        result: dict[str | None, tuple[int, int]] = {}
        for model in {None, *(g.model for g in self.inventory)}:
            matching = self._matching(model)
            result[model] = (sum(g.index not in used for g in matching), len(matching))
        return result

    def allocate(self, key: str, count: int, model: str | None) -> list[int]:
        """Claim `count` free GPUs (of `model`) for the session `key`; its existing claim if any."""
        with self._locked() as claims:
            if key in claims:
                return claims[key]["gpus"]
            used = {i for claim in claims.values() for i in claim["gpus"]}
            matching = self._matching(model)
            free = [g.index for g in matching if g.index not in used]
            what = f"{model} GPUs" if model else "GPUs"
            if not matching:
                raise NoGPUFree(f"This machine has no {what}.")
            if len(free) < count:
                raise NoGPUFree(
                    f"No GPU free right now: {len(free)} of {len(matching)} {what} free, "
                    f"{count} needed. Try again later or choose a CPU profile."
                )
            claims[key] = {"gpus": free[:count], "pid": None, "since": time.time()}
            return free[:count]

    def bind(self, key: str, pid: int) -> None:
        """Tie a claim to the session's process, so that its death releases the GPUs."""
        with self._locked() as claims:
            if key in claims:
                claims[key]["pid"] = pid
                claims[key]["create_time"] = psutil.Process(pid).create_time()

    def release(self, key: str) -> None:
        with self._locked() as claims:
            claims.pop(key, None)

    def claims(self) -> dict:
        with self._locked() as claims:
            return dict(claims)


def _alive(claim: dict) -> bool:
    pid = claim.get("pid")
    if pid is None:
        return time.time() - claim.get("since", 0) < STARTING_GRACE_SECONDS
    try:
        return abs(psutil.Process(pid).create_time() - claim.get("create_time", 0)) < 1
    except psutil.Error:
        return False
