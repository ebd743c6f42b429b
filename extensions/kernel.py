"""IPython extension loaded into every kernel of an Officina session.

It gives the kernel an address-space limit a little under the session's memory limit, so
that a cell allocating past the profile's memory fails with a MemoryError that says so,
instead of the kernel being killed from outside (cgroup OOM) with no explanation. GPU
profiles are left alone: CUDA reserves far more address space than it uses.

It also loads sparkmonitor's kernel extension, so that the Spark jobs a cell runs show under
it (`officina.lab.spark()` adds sparkmonitor's listener to the driver). Its front end opens
its channel to the kernel when the kernel starts, so it cannot wait for the first Spark session.
"""

from __future__ import annotations

import os
import resource


def _gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GB"


def load_ipython_extension(ip) -> None:
    _load_sparkmonitor(ip)
    _limit_memory(ip)


def _load_sparkmonitor(ip) -> None:
    try:
        import sparkmonitor.kernelextension  # noqa: F401
    except ImportError:
        return
    ip.extension_manager.load_extension("sparkmonitor.kernelextension")


def _limit_memory(ip) -> None:
    try:
        limit = int(os.environ.get("OFFICINA_MEM_LIMIT", "0"))
    except ValueError:
        return
    if not limit or os.environ.get("OFFICINA_GPUS"):
        return
    profile = os.environ.get("OFFICINA_PROFILE", "?")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    def explain(shell, etype, value, tb, tb_offset=None):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        print(
            f"\nOfficina: this session's profile '{profile}' allows {_gib(limit)} of memory, and "
            "this cell tried to use more. Free some memory (del large objects) or start your "
            "server with a larger profile (File > Hub Control Panel).",
        )
        return None

    ip.set_custom_exc((MemoryError,), explain)
