"""Dask clusters from a notebook in one line: `client = officina.lab.dask(workers=4)`.

The session already knows where the gateway is and how to authenticate (the spawner sets
DASK_GATEWAY__ADDRESS, __PROXY_ADDRESS and __AUTH__TYPE=jupyterhub, and the server's own
JupyterHub token is accepted by the gateway), so nothing needs configuring here.
"""

from __future__ import annotations

import time


def _progress(total: int, description: str = "Workers"):
    """An ipywidgets progress bar in a notebook, plain text lines elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import display
        import ipywidgets

        if get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None:
            bar = ipywidgets.IntProgress(min=0, max=total, description=description)
            label = ipywidgets.Label(f"0 of {total}")
            display(ipywidgets.HBox([bar, label]))

            def update(n: int) -> None:
                bar.value = n
                label.value = f"{n} of {total}"

            return update
    except ImportError:
        pass
    last = [-1]

    def update(n: int) -> None:
        if n != last[0]:
            print(f"{description}: {n} of {total}", flush=True)
            last[0] = n

    return update


def new_cluster(gateway, cluster_options=None, **options):
    """Submit, then connect: the way to create a cluster that survives a refusal.

    dask-gateway 2026.3's `new_cluster` builds a GatewayCluster before the gateway answers; when
    the gateway refuses (a limit, a bad option) that half-built object's own client is later
    garbage-collected on the client's event-loop thread, where its `close()` waits on that same
    loop: the next call hangs forever. `submit` raises the refusal with nothing half-built.
    The cluster outlives this kernel and session (list and reconnect later); it stops when
    you stop it, or after `dask.idle_timeout` with nobody connected.
    """
    name = gateway.submit(cluster_options, **options)
    return gateway.connect(name, shutdown_on_close=False)


def dask(workers: int | None = None, adaptive: tuple[int, int] | None = None,
         timeout: float = 300, **options):
    """A new Dask cluster for this user and a client connected to it.

    `workers=N` starts N workers; `adaptive=(min, max)` lets the gateway scale between them.
    Shows progress while workers arrive; returns the `distributed.Client` (its cluster is
    `client.cluster`: `.scale()`, `.adapt()`, `.shutdown()`).
    """
    from dask_gateway import Gateway

    if workers is not None and adaptive is not None:
        raise ValueError("give either workers=N or adaptive=(min, max), not both")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be a whole number of workers, got {workers!r}")
    gateway = Gateway()
    cluster = new_cluster(gateway, **options)
    if adaptive is not None:
        low, high = adaptive
        cluster.adapt(minimum=low, maximum=high)
        wanted = low
    else:
        wanted = workers or 0
        cluster.scale(wanted)
    client = cluster.get_client()
    update = _progress(wanted)
    deadline = time.monotonic() + timeout
    while True:
        arrived = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        update(min(arrived, wanted))
        if arrived >= wanted:
            return client
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {arrived} of {wanted} workers arrived within {timeout:g} s")
        time.sleep(0.5)


def dask_clusters() -> list:
    """This user's running clusters (they outlive the notebook and the session)."""
    from dask_gateway import Gateway

    return Gateway().list_clusters()


def connect_dask(name: str):
    """A client for one of this user's running clusters, e.g. after a session restart."""
    from dask_gateway import Gateway

    return Gateway().connect(name).get_client()


def stop_dask(name: str) -> None:
    """Stop one of this user's clusters by name (see dask_clusters())."""
    from dask_gateway import Gateway

    Gateway().stop_cluster(name)
