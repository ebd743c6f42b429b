"""`DaskClusters`: create, scale, adapt and stop your Dask clusters, with their dashboards.

The options form is the gateway's own (`Gateway.cluster_options()`, built on the hub from
`dask.options`), so it offers exactly what the server accepts for this user and the limits of
their groups; whatever the gateway refuses (a limit, a bad value) is shown in the widget in
the gateway's words. Works in JupyterLab and in Voila (plain ipywidgets, no front-end code).
"""

from __future__ import annotations

import html
import time

import ipywidgets as widgets

from officina.lab.clusters import new_cluster

_ERROR = "color:#cf222e"
_OK = "color:#1a7f37"
_WARN = "color:#9a6700"


class Trimmed(str):
    """A success message that says the gateway gave less than asked (a limit)."""


def _gateway():
    from dask_gateway import Gateway

    # Sessions carry DASK_GATEWAY__ADDRESS, __PROXY_ADDRESS, __PUBLIC_ADDRESS and the
    # JupyterHub auth type in their environment: nothing to configure here.
    return Gateway()


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1] if "Traceback" in text else text


def workers_text(info: dict | None) -> str:
    workers = (info or {}).get("workers") or {}
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    memory = sum(w.get("memory_limit", 0) for w in workers.values()) / 2**30
    return f"{len(workers)} worker{'s' if len(workers) != 1 else ''}, {threads} threads, {memory:.1f} GiB"


class _LiveStatus:
    """Stands in for the widget dask-gateway updates, to show the count our way."""

    def __init__(self, view: widgets.HTML, cluster):
        self.view, self.cluster = view, cluster

    @property
    def value(self) -> str:
        return self.view.value

    @value.setter
    def value(self, _their_html) -> None:
        self.view.value = workers_text(self.cluster.scheduler_info)


class ClusterRow(widgets.VBox):
    """One running cluster: live worker count, dashboard link, scale/adapt/stop."""

    def __init__(self, owner: DaskClusters, report):
        self.owner, self.name = owner, report.name
        self.cluster = owner.gateway.connect(report.name)
        self.status = widgets.HTML()
        # dask-gateway's client sets `_status_widget.value` whenever workers come or go.
        self.cluster._status_widget = _LiveStatus(self.status, self.cluster)
        self.status.value = workers_text(self.cluster.scheduler_info)
        link = report.dashboard_link or self.cluster.dashboard_link
        self.dashboard = widgets.HTML(
            f'<a href="{html.escape(link)}" target="_blank" rel="noopener">Dashboard</a>' if link else "no dashboard"
        )
        self.workers = widgets.BoundedIntText(value=len((self.cluster.scheduler_info or {}).get("workers", {})),
                                              min=0, max=1000, description="Workers", layout={"width": "160px"})
        self.scale_button = widgets.Button(description="Scale", icon="arrows-alt-h", layout={"width": "90px"})
        self.minimum = widgets.BoundedIntText(value=0, min=0, max=1000, description="Min", layout={"width": "120px"})
        self.maximum = widgets.BoundedIntText(value=2, min=0, max=1000, description="Max", layout={"width": "120px"})
        self.adapt_button = widgets.Button(description="Adapt", icon="sliders-h", layout={"width": "90px"})
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger", layout={"width": "90px"})
        self.scale_button.on_click(lambda _: self.scale(self.workers.value))
        self.adapt_button.on_click(lambda _: self.adapt(self.minimum.value, self.maximum.value))
        self.stop_button.on_click(lambda _: self.stop())
        title = widgets.HTML(f"<b>{html.escape(report.name)}</b> <i>{html.escape(str(report.status.name).lower())}</i>")
        super().__init__(children=[
            widgets.HBox([title, self.status, self.dashboard]),
            widgets.HBox([self.workers, self.scale_button, self.minimum, self.maximum, self.adapt_button, self.stop_button]),
        ], layout={"border": "1px solid #d0d7de", "padding": "4px", "margin": "2px 0"})

    def scale(self, n: int) -> None:
        self.owner.run(f"Scaling {self.name[:8]} to {n} workers", lambda: self._scale_and_wait(n))

    def _scale_and_wait(self, n: int) -> str:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.cluster.scale(n)
        trimmed = [str(w.message) for w in caught if "exceed" in str(w.message)]
        if trimmed:
            # The gateway trimmed the request to this user's limit: say so, then wait for that.
            n = int(trimmed[0].rsplit("Scaling to ", 1)[-1].split()[0])
        self.owner.wait_for_workers(self.cluster, n)
        return Trimmed(trimmed[0]) if trimmed else f"{n} workers running"

    def adapt(self, minimum: int, maximum: int) -> None:
        def adapt():
            if minimum > maximum:
                raise ValueError(f"Min ({minimum}) is above Max ({maximum})")
            self.cluster.adapt(minimum=minimum, maximum=maximum)
            return f"adaptive between {minimum} and {maximum} workers"

        self.owner.run(f"Adapting {self.name[:8]}", adapt)

    def stop(self) -> None:
        def stop():
            self.cluster.shutdown()
            return f"stopped {self.name}"

        self.owner.run(f"Stopping {self.name[:8]}", stop)


class DaskClusters(widgets.VBox):
    """Your Dask clusters: an options form and Create, then one row per running cluster."""

    def __init__(self, gateway=None, wait_timeout: float = 300, **kwargs):
        self.gateway = gateway or _gateway()
        self.wait_timeout = wait_timeout
        self.rows: dict[str, ClusterRow] = {}
        self.options = self.gateway.cluster_options()
        self.new_workers = widgets.BoundedIntText(value=2, min=0, max=1000, description="Workers",
                                                  layout={"width": "160px"})
        self.create_button = widgets.Button(description="Create cluster", icon="plus", button_style="primary")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.create_button.on_click(lambda _: self.create(self.new_workers.value))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.progress = widgets.IntProgress(min=0, max=1, value=0, layout={"width": "300px", "visibility": "hidden"})
        self.note = widgets.HTML()
        self.list_box = widgets.VBox()
        super().__init__(children=[
            widgets.HTML("<h3>Dask clusters</h3>"),
            self.options._widget(),  # the gateway's form for the hub-side declaration
            widgets.HBox([self.new_workers, self.create_button, self.refresh_button]),
            widgets.HBox([self.progress, self.note]),
            self.list_box,
        ], **kwargs)
        self.refresh()

    # --- actions (each reports success or the gateway's refusal in the note) ---

    def run(self, what: str, action) -> bool:
        self.note.value = f"{html.escape(what)}…"
        try:
            done = action()
        except Exception as exc:
            self.note.value = f'<span style="{_ERROR}">{html.escape(what)}: {html.escape(_message(exc))}</span>'
            self.progress.layout.visibility = "hidden"
            self.refresh(keep_note=True)
            return False
        colour = _WARN if isinstance(done, Trimmed) else _OK
        self.note.value = f'<span style="{colour}">{html.escape(done or what + ": done")}</span>'
        self.refresh(keep_note=True)
        return True

    def create(self, workers: int) -> bool:
        def create():
            cluster = new_cluster(self.gateway, self.options)
            adaptive = self.options.get("adaptive_maximum", 0)
            if adaptive:
                # Started adaptive by the gateway (from the options): wait for its minimum.
                self.wait_for_workers(cluster, self.options.get("adaptive_minimum", 0))
                return f"created {cluster.name} (adaptive up to {adaptive} workers)"
            try:
                cluster.scale(workers)
            except Exception as exc:
                # Refused (a limit): an empty cluster would only hold a place; remove it.
                cluster.shutdown()
                raise RuntimeError(f"{_message(exc)} (the new cluster was stopped)") from exc
            self.wait_for_workers(cluster, workers)
            return f"created {cluster.name} with {workers} workers"

        return self.run("Creating a cluster", create)

    def wait_for_workers(self, cluster, n: int) -> None:
        """Progress while workers arrive (they take a second or two each here)."""
        self.progress.max, self.progress.value = max(n, 1), 0
        self.progress.layout.visibility = "visible" if n else "hidden"
        deadline = time.monotonic() + self.wait_timeout
        while True:
            arrived = len((cluster.scheduler_info or {}).get("workers", {}))
            self.progress.value = min(arrived, n)
            self.progress.description = f"{min(arrived, n)} of {n}"
            if arrived >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {arrived} of {n} workers arrived within {self.wait_timeout:g} s")
            time.sleep(0.3)
        self.progress.layout.visibility = "hidden"

    def refresh(self, keep_note: bool = False) -> None:
        try:
            reports = self.gateway.list_clusters()
        except Exception as exc:
            self.note.value = f'<span style="{_ERROR}">Cannot list clusters: {html.escape(_message(exc))}</span>'
            return
        names = {r.name for r in reports}
        for gone in set(self.rows) - names:
            self.rows.pop(gone).cluster.close(shutdown=False)
        for report in reports:
            if report.name not in self.rows:
                self.rows[report.name] = ClusterRow(self, report)
        self.list_box.children = [self.rows[r.name] for r in reports] or [widgets.HTML("<i>No clusters running.</i>")]
        if not keep_note:
            self.note.value = ""
