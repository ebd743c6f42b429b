"""Officina's embedded HTCondor pool and per-user submission with platform-minted IDTOKENs.

- `pool`: the pool as a platform component (a Debian 13 root made by scripts/condor-root.sh,
  started and stopped from Python), `host_can_run_condor()` for `officina up`.
- `config`: the pool's and the sessions' HTCondor configuration, as pure functions.
- `tokens`: tokens minted for hub users, written into their homes.
- `cli`: condor_submit / condor_rm / condor_q for sessions, on the htcondor2 bindings (the
  host has no HTCondor tools; dask-jobqueue calls these).
"""

from .pool import CondorError, CondorPool, host_can_run_condor

__all__ = ["CondorError", "CondorPool", "host_can_run_condor"]
