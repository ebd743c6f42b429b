"""Processes that must not outlive their parent.

The hub starts its services (dask-dashboards, resources) itself; when the hub is killed
(a crash, SIGKILL, the supervisor's last resort), nothing tells them, and they would stay on
their ports as orphans while the restarted hub starts new ones beside them. They watch their
parent instead: once it is gone (they have been handed to another process), they end.
(PR_SET_PDEATHSIG is not enough: it fires when the parent *thread* that forked them ends.)
"""

from __future__ import annotations

import asyncio
import os


async def watch_parent(on_orphaned, every: float = 2.0) -> None:
    """Call `on_orphaned()` once the process that started this one has gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(every)
    on_orphaned()
