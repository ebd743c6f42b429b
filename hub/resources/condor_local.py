"""HTCondor workers as local execute nodes of the embedded pool, for one user.

DODAS grew HTCondor pools by starting worker nodes that join the collector; here a resource of
kind "condor" is `workers` startds added to the embedded pool (officina.hub.condor), each with
`worker_cores` and `worker_memory` in one partitionable slot. Only the owner's jobs may start on
them (`START` names their account), and they advertise `OfficinaResource = "<id>"`, so a job
asks for them with `requirements = TARGET.OfficinaResource == "<id>"` (`officina.lab` does it).
The pool's own slot stays for everyone.

The startds run inside the pool's namespace as the pool's daemons (the master starts them from
its configuration), and the jobs as the owner's account, as on the rest of the pool. The list
of nodes is kept by the pool (workers.json): a restarted pool starts them again, a restarted
resource manager finds them in the collector.
"""

from __future__ import annotations

from pathlib import Path

from ..condor.pool import CondorError, CondorPool
from .contract import BackendError, Owner, Resource


class LocalCondorBackend:
    kind = "condor"

    def __init__(self, pool: CondorPool):
        self.pool = pool

    def _set(self, resource: Resource, owner_name: str, workers: int) -> list[str]:
        if not self.pool.running:
            raise BackendError("the platform's HTCondor pool is not running (see `officina status`)")
        memory_mb = int(resource.options["worker_memory"] * 1024)
        try:
            return self.pool.set_workers(resource.id, owner_name, workers, int(resource.options["worker_cores"]), memory_mb)
        except CondorError as exc:
            raise BackendError(str(exc)) from None

    def start(self, resource: Resource, owner: Owner) -> None:
        resource.state = {"pool": self.pool.address}
        resource.endpoints = {
            "pool": self.pool.address,
            "requirements": f'TARGET.OfficinaResource == "{resource.id}"',
        }
        resource.state["nodes"] = self._set(resource, owner.name, resource.workers)

    def scale(self, resource: Resource, owner: Owner, workers: int) -> None:
        # Nodes are removed from the highest index down; a job running on a removed node is
        # ended by it (its schedd puts it back in the queue), as when a cloud worker goes away.
        resource.state["nodes"] = self._set(resource, owner.name, workers)

    def stop(self, resource: Resource) -> None:
        try:
            self.pool.set_workers(resource.id, resource.owner, 0, 1, 1, wait=self.pool.running)
        except CondorError as exc:
            raise BackendError(str(exc)) from None

    def alive(self, resource: Resource) -> tuple[bool, int, str]:
        if not self.pool.running:
            return False, 0, "the HTCondor pool is not running"
        expected = self.pool.worker_resources().get(resource.id, {}).get("count", 0)
        if expected != resource.workers:
            return False, 0, "the pool no longer has its execute nodes"
        return True, len(self.pool.worker_names(resource.id)), ""

    def busy(self, resource: Resource) -> bool:
        return any(slot["State"] == "Claimed" for slot in self.pool.worker_slots(resource.id))


def pool_for(condor_settings: dict, state_root: Path, homes: Path) -> CondorPool:
    """The platform's pool as the `htcondor` component runs it (same state, same port)."""
    return CondorPool(root=condor_settings["root"], state_dir=Path(state_root) / "condor", homes=homes,
                      port=condor_settings["port"])
