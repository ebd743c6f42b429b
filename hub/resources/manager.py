"""The resource manager: the one place that starts Spark clusters (and, next, HTCondor workers
and DEEPaaS servers) for users, a JupyterHub service.

Sessions never start platform processes themselves: they ask here, with their JupyterHub
token, which must carry the `custom:officina:resources` scope for their own user. The engine
checks the options against the kind's declaration, the per-group quota over all of the user's
resources, keeps one JSON record per resource in the state directory (written before and after
every change, so a restarted manager finds everything again and cleans up what died), and
stops resources nobody used for `resources.idle_timeout` seconds. What is kind-specific is in
the backends (contract.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .contract import Backend, BackendError, Owner, Phase, Resource
from .kinds import KindSpec, OptionError, QuotaError, quota_for

log = logging.getLogger("officina.resources")

ACTIVE = (Phase.STARTING, Phase.RUNNING)


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


class RecordStore:
    """One JSON file per resource (atomic replace), in a root-only folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, resource: Resource) -> None:
        path = self.folder / f"{resource.id}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(resource.to_json(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def load_all(self) -> list[Resource]:
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                records.append(Resource.from_json(json.loads(path.read_text())))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("Ignoring unreadable resource record %s: %s", path.name, exc)
        return records

    def forget(self, resource: Resource) -> None:
        (self.folder / f"{resource.id}.json").unlink(missing_ok=True)


@dataclass
class Engine:
    """Everything but HTTP: the service's handlers and the tests drive this."""

    store: RecordStore
    kinds: dict[str, KindSpec]
    backends: dict[str, Backend]
    limits: list[dict]
    owner_of: callable          # (username, groups) -> Owner
    idle_timeout: int = 1800
    keep_stopped: int = 3600    # seconds a stopped/failed record stays listed

    def __post_init__(self):
        self.resources: dict[str, Resource] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task] = set()

    # --- start-up: find what a previous run left ---

    async def recover(self) -> None:
        for resource in self.store.load_all():
            self.resources[resource.id] = resource
            if resource.phase not in ACTIVE and resource.phase != Phase.STOPPING:
                continue
            backend = self.backends.get(resource.kind)
            if backend is None:
                resource.phase, resource.message = Phase.FAILED, f"kind {resource.kind!r} is no longer configured"
                self.store.save(resource)
                continue
            alive, workers, message = await asyncio.to_thread(backend.alive, resource)
            if resource.phase == Phase.RUNNING and alive:
                log.info("Found %s %s of %s running (%d workers)", resource.kind, resource.id, resource.owner, workers)
                continue
            # Half-started, half-stopped or dead: clean up whatever is left of it.
            log.info("Cleaning up %s %s of %s (%s): %s", resource.kind, resource.id, resource.owner,
                     resource.phase.value, message)
            await asyncio.to_thread(backend.stop, resource)
            stopping = resource.phase == Phase.STOPPING
            resource.phase = Phase.STOPPED if stopping else Phase.FAILED
            resource.message = "" if stopping else f"lost while the resource manager was down: {message}"
            self.store.save(resource)

    # --- what users do ---

    def list(self, username: str) -> list[Resource]:
        now = time.time()
        return [r for r in self.resources.values() if r.owner == username
                and (r.phase in ACTIVE or r.phase == Phase.STOPPING or now - r.last_activity < self.keep_stopped)]

    def get(self, username: str, resource_id: str) -> Resource:
        resource = self.resources.get(resource_id)
        if resource is None or resource.owner != username:
            # The same answer for "absent" and "someone else's".
            raise NotFound(f"you have no resource {resource_id}")
        return resource

    def _check_quota(self, username: str, groups, extra_cores: float, extra_memory: float,
                     new_resource: bool, excluding: str | None = None) -> None:
        quota = quota_for(self.limits, groups)
        mine = [r for r in self.resources.values() if r.owner == username and r.phase in ACTIVE and r.id != excluding]
        if new_resource and len(mine) >= quota.max_resources:
            raise QuotaError(f"you already have {len(mine)} running resource{'s' if len(mine) != 1 else ''}, "
                             f"the most {quota.source} allows ({quota.max_resources}); delete one first")
        cores = sum(self.kinds[r.kind].cores(r.options, r.workers) for r in mine)
        memory = sum(self.kinds[r.kind].memory(r.options, r.workers) for r in mine)
        # Scaling asks for the resource's new total, beside what the user's other resources hold.
        asked, others = ("more", "in use") if excluding is None else (f"for {excluding}", "in use by your others")
        if cores + extra_cores > quota.max_cores:
            raise QuotaError(f"{extra_cores:g} cores {asked} would exceed {quota.source}: {quota.max_cores} cores "
                             f"across your resources, {cores:g} {others}")
        if memory + extra_memory > quota.max_memory_gib:
            raise QuotaError(f"{extra_memory:g} GiB {asked} would exceed {quota.source}: {quota.max_memory_gib:g} GiB "
                             f"across your resources, {memory:g} GiB {others}")

    async def create(self, username: str, groups, kind: str, request: dict) -> Resource:
        spec = self.kinds.get(kind)
        if spec is None:
            raise OptionError(f"kind: unknown kind {kind!r} (known: {', '.join(sorted(self.kinds))})")
        options, workers = spec.validate(request, groups)
        self._check_quota(username, groups, spec.cores(options, workers), spec.memory(options, workers), True)
        now = time.time()
        resource = Resource(id=secrets.token_hex(6), kind=kind, owner=username, options=options, workers=workers,
                            created=now, last_activity=now, message="starting")
        self.resources[resource.id] = resource
        self.store.save(resource)
        owner = self.owner_of(username, groups)
        self._spawn(self._start(resource, owner))
        return resource

    async def _start(self, resource: Resource, owner: Owner) -> None:
        async with self._lock(resource.id):
            try:
                await asyncio.to_thread(self.backends[resource.kind].start, resource, owner)
            except Exception as exc:  # noqa: BLE001 - any failure ends as a FAILED record with its reason
                message = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
                log.warning("Starting %s %s failed: %s", resource.kind, resource.id, message)
                try:
                    await asyncio.to_thread(self.backends[resource.kind].stop, resource)
                except Exception as cleanup:  # noqa: BLE001 - the record must still say FAILED
                    log.error("Cleaning up %s %s failed too: %s", resource.kind, resource.id, cleanup)
                    message += f" (and cleaning up failed: {cleanup})"
                resource.phase, resource.message = Phase.FAILED, message
            else:
                if resource.phase == Phase.STARTING:
                    resource.phase, resource.message = Phase.RUNNING, ""
            resource.last_activity = time.time()
            self.store.save(resource)

    async def scale(self, username: str, groups, resource_id: str, workers) -> Resource:
        resource = self.get(username, resource_id)
        spec = self.kinds[resource.kind]
        workers = spec.validate_workers(workers)
        async with self._lock(resource.id):
            if resource.phase != Phase.RUNNING:
                raise Conflict(f"{resource.kind} {resource.id} is {resource.phase.value}, not running")
            self._check_quota(username, groups, spec.cores(resource.options, workers),
                              spec.memory(resource.options, workers), False, excluding=resource.id)
            owner = self.owner_of(username, groups)
            try:
                await asyncio.to_thread(self.backends[resource.kind].scale, resource, owner, workers)
            except BackendError as exc:
                resource.message = str(exc)
                self.store.save(resource)
                raise Conflict(str(exc)) from None
            resource.workers, resource.last_activity, resource.message = workers, time.time(), ""
            self.store.save(resource)
        return resource

    async def delete(self, username: str, resource_id: str) -> Resource:
        resource = self.get(username, resource_id)
        await self._stop(resource, "")
        return resource

    async def _stop(self, resource: Resource, why: str) -> None:
        async with self._lock(resource.id):
            if resource.phase in (Phase.STOPPED,):
                return
            resource.phase, resource.message = Phase.STOPPING, why
            self.store.save(resource)
            await asyncio.to_thread(self.backends[resource.kind].stop, resource)
            resource.phase, resource.last_activity = Phase.STOPPED, time.time()
            self.store.save(resource)

    # --- housekeeping ---

    async def check(self) -> None:
        """Idle stops, dead resources, expiry of old records; run every few seconds."""
        now = time.time()
        for resource in list(self.resources.values()):
            if resource.phase == Phase.RUNNING:
                backend = self.backends[resource.kind]
                alive, _, message = await asyncio.to_thread(backend.alive, resource)
                if not alive:
                    async with self._lock(resource.id):
                        await asyncio.to_thread(backend.stop, resource)
                        resource.phase, resource.message = Phase.FAILED, message or "its processes ended"
                        resource.last_activity = now
                        self.store.save(resource)
                    continue
                if await asyncio.to_thread(backend.busy, resource):
                    resource.last_activity = now
                    self.store.save(resource)
                elif self.idle_timeout and now - resource.last_activity > self.idle_timeout:
                    log.info("Stopping idle %s %s of %s", resource.kind, resource.id, resource.owner)
                    await self._stop(resource, f"stopped after {self.idle_timeout} s without use")
            elif resource.phase in (Phase.STOPPED, Phase.FAILED) and now - resource.last_activity > self.keep_stopped:
                self.resources.pop(resource.id, None)
                self.store.forget(resource)

    def touch(self, resource: Resource) -> None:
        resource.last_activity = time.time()

    async def stop_all(self, why: str) -> None:
        for task in list(self.tasks):
            task.cancel()
        active = [r for r in self.resources.values() if r.phase in ACTIVE or r.phase == Phase.STOPPING]
        await asyncio.gather(*(self._stop(r, why) for r in active), return_exceptions=True)

    def _lock(self, resource_id: str) -> asyncio.Lock:
        return self.locks.setdefault(resource_id, asyncio.Lock())

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
