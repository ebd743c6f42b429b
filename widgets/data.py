"""The data browser: the federation's sites and datasets, what the cache holds, mount and
prefetch with a progress bar, and a plot of the cache's hits per dataset.

Everything it shows comes from officina.lab.data (the sites' declarations through the data
service, listings through the redirector with the user's token, the cache's own records).
"""

from __future__ import annotations

import ipywidgets as widgets

from officina.lab import data

MB = 2**20


class DataBrowser(widgets.VBox):
    def __init__(self, **kwargs):
        self.site = widgets.Dropdown(description="Site", layout=widgets.Layout(width="340px"))
        self.dataset = widgets.Select(description="Datasets", rows=6, layout=widgets.Layout(width="720px"))
        self.mount_button = widgets.Button(description="Mount", icon="folder-open",
                                           tooltip="Make it readable at ~/data/<name>")
        self.prefetch_button = widgets.Button(description="Prefetch", icon="download",
                                              tooltip="Read it once through the cache")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.progress = widgets.IntProgress(min=0, max=1, value=0, description="MB",
                                            layout=widgets.Layout(width="420px"))
        self.note = widgets.HTML()
        self.plot = widgets.Output()
        self.site.observe(lambda change: self._show_datasets(), names="value")
        self.mount_button.on_click(lambda _: self.mount())
        self.prefetch_button.on_click(lambda _: self.prefetch())
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__([
            widgets.HTML("<h3>Federated data</h3>"),
            widgets.HBox([self.site, self.refresh_button]),
            self.dataset,
            widgets.HBox([self.mount_button, self.prefetch_button, self.progress]),
            self.note, self.plot,
        ], **kwargs)
        self._datasets: list[dict] = []
        self._stats: dict[str, dict] = {}
        self.refresh()

    # -- what it shows ------------------------------------------------------------------

    def refresh(self) -> None:
        """Sites, datasets and the cache's records again; the plot redrawn."""
        try:
            self._sites = data.sites()
            self._datasets = data.datasets()
            self._stats = {s["dataset"]: s for s in data.cache_stats()}
        except data.DataError as exc:
            self.note.value = f"<span style='color:#b00'>{exc}</span>"
            return
        names = [s["name"] for s in self._sites if s["readable"]]
        current = self.site.value
        self.site.options = names
        self.site.value = current if current in names else (names[0] if names else None)
        self._show_datasets()
        self._draw()

    def _show_datasets(self) -> None:
        options = []
        for d in self._datasets:
            if d["site"] != self.site.value:
                continue
            stats = self._stats.get(d["path"])
            cached = 100 * stats["cached_bytes"] / d["bytes"] if stats and d["bytes"] else 0
            options.append((f"{d['path']} — {d['files']} files, {d['bytes'] / MB:.1f} MB, {cached:.0f}% cached", d["path"]))
        self.dataset.options = options
        if options and self.dataset.value is None:
            self.dataset.value = options[0][1]

    def _draw(self) -> None:
        """The chart as a PNG put into the output directly: capturing with `with output:`
        needs a front end listening, which a button's callback in Voila may not have."""
        import io

        import matplotlib.pyplot as plt
        from IPython.display import Image

        self.plot.outputs = ()
        stats = list(self._stats.values())
        if not stats:
            self.plot.append_stdout("Nothing read through the cache yet.\n")
            return
        ax = data.plot_cache(stats)
        png = io.BytesIO()
        ax.figure.savefig(png, format="png", dpi=90, bbox_inches="tight")
        plt.close(ax.figure)
        self.plot.append_display_data(Image(data=png.getvalue(), format="png"))

    # -- actions --------------------------------------------------------------------------

    def mount(self):
        path = self.dataset.value
        if path is None:
            self.note.value = "Choose a dataset first."
            return None
        try:
            where = data.mount(path)
        except data.DataError as exc:
            self.note.value = f"<span style='color:#b00'>Cannot mount {path}: {exc}</span>"
            return None
        self.note.value = f"Mounted: <code>{where}</code> (read-only, through the cache, with your token)"
        return where

    def prefetch(self):
        path = self.dataset.value
        if path is None:
            self.note.value = "Choose a dataset first."
            return None
        chosen = next(d for d in self._datasets if d["path"] == path)
        self.progress.max = max(1, chosen["bytes"] // MB)
        self.progress.value = 0
        self.note.value = f"Reading {path} through the cache…"

        def update(mb: int) -> None:
            self.progress.value = min(mb, self.progress.max)

        try:
            done = data.prefetch(path, progress=update)
        except data.DataError as exc:
            self.note.value = f"<span style='color:#b00'>{exc}</span>"
            return None
        self.note.value = (f"Prefetched {path}: {done['files']} files, {done['bytes'] / MB:.1f} MB "
                           f"in {done['seconds']:.1f} s")
        self.refresh()
        return done
