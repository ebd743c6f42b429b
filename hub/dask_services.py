"""Names and paths the hub and the Dask gateway share.

Kept apart from officina.hub.dask_gateway on purpose: importing dask_gateway_server's
backends into the hub process replaces traitlets' default logging configuration with
dask-gateway's (colorlog) one, and JupyterHub's log lines then fail to format.
"""

from __future__ import annotations

from pathlib import Path

GATEWAY_SERVICE = "dask-gateway"
DASHBOARDS_SERVICE = "dask-dashboards"


def gateway_db(state) -> Path:
    """The gateway's cluster records (the dashboards service reads who owns what here)."""
    return state.root / "dask" / "db" / "gateway.sqlite"
