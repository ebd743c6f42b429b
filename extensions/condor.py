"""HTCondor from a notebook: your schedd, execute nodes of your own, and Dask on HTCondor.

Each session starts with a token the platform minted for this user (in ~/.condor/tokens.d) and
CONDOR_CONFIG pointing at the platform's pool; the user has a schedd of their own there
(`<account>@officina`), which nobody else can read. So:

    schedd = officina.lab.schedd()                   # htcondor2.Schedd, yours
    nodes = officina.lab.condor_workers(workers=2)   # execute nodes only your jobs may use
    client = officina.lab.condor_dask(workers=2, on=nodes)   # Dask workers as HTCondor jobs

`condor_workers` asks the hub's resource manager (quotas of your groups apply); jobs go to those
nodes when they carry `requirements = <nodes["endpoints"]["requirements"]>`, which
`condor_dask(on=...)` and `submit(..., on=...)` add.
"""

from __future__ import annotations

import os
import pwd
import time

from .resources import ResourceError, Resources, create_running


class CondorUnavailable(RuntimeError):
    """This session has no HTCondor pool (the platform runs none, or no token was minted)."""


def _account() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _check_session() -> None:
    if not os.environ.get("CONDOR_CONFIG"):
        raise CondorUnavailable("this session has no HTCondor pool: the platform runs none "
                                "(`officina up` says why at start)")
    tokens = os.environ.get("_CONDOR_SEC_TOKEN_DIRECTORY", os.path.expanduser("~/.condor/tokens.d"))
    if not os.path.isdir(tokens) or not os.listdir(tokens):
        raise CondorUnavailable(f"no HTCondor token in {tokens}: restart your session to get a fresh one")


def schedd():
    """Your own schedd on the platform's pool (htcondor2.Schedd)."""
    import htcondor2 as htcondor

    _check_session()
    ad = htcondor.Collector().locate(htcondor.DaemonType.Schedd, f"{_account()}@officina")
    return htcondor.Schedd(ad)


def _requirements(on) -> str | None:
    if on is None:
        return None
    if isinstance(on, dict):
        return on["endpoints"]["requirements"]
    return f'TARGET.OfficinaResource == "{on}"'


def submit(description: dict, count: int = 1, on=None):
    """Submit `count` jobs from a submit description (a dict of submit commands) to your
    schedd; `on`: one of your condor_workers resources (or its id) to run them there.
    Returns the htcondor2 SubmitResult (`.cluster()`)."""
    import htcondor2 as htcondor

    description = dict(description)
    wanted = _requirements(on)
    if wanted:
        own = description.get("requirements")
        description["requirements"] = f"({own}) && ({wanted})" if own else wanted
    return schedd().submit(htcondor.Submit(description), count=count)


def condor_workers(workers: int | None = None, timeout: float = 300, **options) -> dict:
    """Execute nodes of your own in the platform's pool (only your jobs run there), from the
    hub's resource manager: `workers=N`, `worker_cores`, `worker_memory` (GiB), within your
    group's quota. Returns the resource's record; `stop_condor_workers(record["id"])` ends it,
    and it ends by itself after the idle timeout when no job runs on it."""
    _check_session()
    return create_running("condor", workers, timeout, **options)


def condor_worker_sets() -> list[dict]:
    return Resources().list("condor")


def stop_condor_workers(resource_id: str) -> dict:
    return Resources().delete(resource_id)


def _bindings_job_class():
    """dask-jobqueue's HTCondor job, submitting and removing through the htcondor2 bindings in
    this process. Its own way runs the condor_submit / condor_rm commands, which here are Python
    programs on the same bindings: an interpreter start-up (about half a second on a small
    machine) for every worker that is asked for."""
    import asyncio

    import htcondor2 as htcondor
    from dask_jobqueue.htcondor import HTCondorJob

    class BindingsHTCondorJob(HTCondorJob):
        async def _submit_job(self, script_filename):
            with open(script_filename) as handle:
                description = handle.read()
            # The job script is a whole submit description, its `Queue` included (count=0).
            result = await asyncio.to_thread(lambda: schedd().submit(htcondor.Submit(description), count=0))
            return f"1 job(s) submitted to cluster {result.cluster()}."

        @classmethod
        async def _close_job(cls, job_id, cancel_command):
            if job_id:
                await asyncio.to_thread(lambda: schedd().act(htcondor.JobAction.Remove, [job_id]))

    return BindingsHTCondorJob


def condor_dask(workers: int = 2, on=None, cores: int = 1, memory: str = "1 GiB", timeout: float = 300, **kwargs):
    """Dask workers as HTCondor jobs of yours (dask-jobqueue), and a client on them.

    The scheduler runs in this kernel; each worker is a job in your schedd, running as your
    account with the platform's Python. `on`: one of your condor_workers resources, to run the
    workers on your own nodes. Shows progress while workers arrive; returns the
    distributed.Client (its cluster is `client.cluster`: `.scale()`, `.close()`)."""
    from dask.distributed import Client
    from dask_jobqueue import HTCondorCluster

    from .clusters import _progress

    _check_session()
    python = os.environ.get("OFFICINA_CONDOR_PYTHON")
    if not python:
        raise CondorUnavailable("this session lacks OFFICINA_CONDOR_PYTHON (the workers' Python): restart it")
    extra = dict(kwargs.pop("job_extra_directives", {}) or {})
    wanted = _requirements(on)
    if wanted:
        extra["requirements"] = wanted
    cluster = HTCondorCluster(
        cores=cores, memory=memory, disk=kwargs.pop("disk", "100 MiB"), python=python,
        # No dashboard unless asked for: the session has no route to a port of the kernel's,
        # and starting Bokeh costs the first result half a second.
        scheduler_options={"host": "127.0.0.1", "dashboard_address": kwargs.pop("dashboard_address", None)},
        log_directory=kwargs.pop("log_directory", os.path.expanduser("~/.officina/dask-condor-logs")),
        job_extra_directives=extra, job_cls=_bindings_job_class(), **kwargs,
    )
    cluster.scale(workers)
    client = Client(cluster)
    update = _progress(workers)
    deadline = time.monotonic() + timeout
    while True:
        arrived = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        update(min(arrived, workers))
        if arrived >= workers:
            return client
        if time.monotonic() > deadline:
            held = _held_reasons(cluster)
            client.close()
            cluster.close()
            raise TimeoutError(f"only {arrived} of {workers} Dask workers arrived within {timeout:g} s"
                               + (f"; HTCondor says: {held}" if held else ""))
        time.sleep(0.1)


def _held_reasons(cluster) -> str:
    """Why jobs of the cluster are held, if HTCondor says (the usual reason workers never come)."""
    try:
        ids = [job.job_id for job in cluster.workers.values() if getattr(job, "job_id", None)]
        if not ids:
            return ""
        clusters = sorted({i.split(".")[0] for i in ids})
        ads = schedd().query(constraint=" || ".join(f"ClusterId == {c}" for c in clusters),
                             projection=["HoldReason"])
        return "; ".join(sorted({ad["HoldReason"] for ad in ads if "HoldReason" in ad}))
    except Exception:  # noqa: BLE001 - only a hint for the error message
        return ""


__all__ = ["CondorUnavailable", "ResourceError", "condor_dask", "condor_worker_sets", "condor_workers",
           "schedd", "stop_condor_workers", "submit"]
