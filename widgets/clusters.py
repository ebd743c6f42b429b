"""`Clusters`: one panel for the three kinds a session can start: Dask, Spark and HTCondor.

Dask is `DaskClusters` (dask-gateway). Spark clusters and HTCondor workers come from the
resource manager; their forms are built from the kind's declaration the manager serves
(`api/kinds`), so they offer what the server accepts (one `ResourcePanel`, two kinds). The
HTCondor tab also shows your own jobs in your own schedd, with Remove.
"""

from __future__ import annotations

import html
import os
import time

import ipywidgets as widgets

from officina.lab.resources import Resources

_ERROR, _OK = "color:#cf222e", "color:#1a7f37"


def _field(name: str, spec: dict) -> widgets.Widget:
    cls = widgets.BoundedIntText if spec["type"] == "integer" else widgets.BoundedFloatText
    return cls(value=spec["default"], min=spec["minimum"], max=spec["maximum"], description=spec["title"],
               style={"description_width": "initial"}, layout={"width": "240px"})


class ResourcePanel(widgets.VBox):
    """Your resources of one kind from the resource manager: the declared options, Create (with
    progress), then per resource its workers, its links, Scale and Stop."""

    kind = ""
    noun = "resource"       # "Spark cluster"
    unit = "workers"

    def __init__(self, manager: Resources | None = None, wait_timeout: float = 300, **kwargs):
        self.manager = manager or Resources()
        self.wait_timeout = wait_timeout
        kinds = self.manager.kinds()
        if self.kind not in kinds:
            raise RuntimeError(f"this platform offers no {self.noun}s (its resource manager has no {self.kind!r} kind)")
        schema = kinds[self.kind]
        self.fields = {name: _field(name, spec) for name, spec in schema["properties"].items()}
        self.create_button = widgets.Button(description=f"Create {self.noun}", icon="plus", button_style="primary")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.create_button.on_click(lambda _: self.create())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.progress = widgets.IntProgress(min=0, max=1, layout={"width": "300px", "visibility": "hidden"})
        self.note = widgets.HTML()
        self.list_box = widgets.VBox()
        self.rows: dict[str, dict] = {}
        super().__init__(children=[
            widgets.HTML(f"<h3>{html.escape(schema['title'])}s</h3>"),
            widgets.HBox(list(self.fields.values())),
            widgets.HBox([self.create_button, self.refresh_button]),
            widgets.HBox([self.progress, self.note]),
            self.list_box,
        ], **kwargs)
        self.refresh()

    def _say(self, text: str, ok: bool = True) -> None:
        self.note.value = f'<span style="{_OK if ok else _ERROR}">{html.escape(text)}</span>'

    def create(self) -> bool:
        try:
            record = self.manager.create(self.kind, **{name: w.value for name, w in self.fields.items()})
            self.progress.max, self.progress.value = 1, 0
            self.progress.layout.visibility = "visible"
            self.note.value = f"Starting {record['id']}…"
            record = self.manager.wait_running(record["id"], self.wait_timeout)
            self.progress.value = 1
            self._say(f"created {record['id']} with {record['workers']} {self.unit}")
            return True
        except Exception as exc:  # the manager's refusal, in its words
            self._say(f"Creating a {self.noun}: {exc}", ok=False)
            return False
        finally:
            self.progress.layout.visibility = "hidden"
            self.refresh(keep_note=True)

    def scale(self, resource_id: str, workers: int) -> None:
        try:
            record = self.manager.scale(resource_id, workers)
            self._say(f"{resource_id} has {record['workers']} {self.unit}")
        except Exception as exc:
            self._say(f"Scaling {resource_id}: {exc}", ok=False)
        self.refresh(keep_note=True)

    def stop(self, resource_id: str) -> None:
        try:
            self.manager.delete(resource_id)
            self._say(f"stopped {resource_id}")
        except Exception as exc:
            self._say(f"Stopping {resource_id}: {exc}", ok=False)
        self.refresh(keep_note=True)

    def refresh(self, keep_note: bool = False) -> None:
        try:
            records = [r for r in self.manager.list(self.kind) if r["phase"] in ("starting", "running")]
        except Exception as exc:
            self._say(f"Cannot list {self.noun}s: {exc}", ok=False)
            return
        self.rows = {}
        boxes = []
        for record in records:
            rid = record["id"]
            workers = widgets.BoundedIntText(value=record["workers"], min=0, max=1000, description=self.unit.capitalize(),
                                             layout={"width": "160px"})
            scale = widgets.Button(description="Scale", layout={"width": "80px"})
            stop = widgets.Button(description="Stop", button_style="danger", layout={"width": "80px"})
            scale.on_click(lambda _, rid=rid, w=workers: self.scale(rid, w.value))
            stop.on_click(lambda _, rid=rid: self.stop(rid))
            title = widgets.HTML(f"<b>{rid}</b> <i>{record['phase']}</i>, {record['workers']} {self.unit} "
                                 f"{self._extra(record)}")
            self.rows[rid] = {"workers": workers, "scale": scale, "stop": stop, "title": title}
            boxes.append(widgets.HBox([title, workers, scale, stop]))
        self.list_box.children = boxes or [widgets.HTML(f"<i>No {self.noun}s running.</i>")]
        if not keep_note:
            self.note.value = ""


    def _extra(self, record: dict) -> str:
        return ""


class SparkClusters(ResourcePanel):
    """Your Spark clusters, each with a link to its UI (through the hub, for you only)."""

    kind, noun = "spark", "Spark cluster"

    def _extra(self, record: dict) -> str:
        ui = record["endpoints"].get("ui")
        return f'<a href="{html.escape(ui)}" target="_blank" rel="noopener">Spark UI</a>' if ui else ""


class CondorWorkers(ResourcePanel):
    """Execute nodes of your own in the platform's HTCondor pool; jobs go there with the
    requirements shown (officina.lab.condor_dask(on=...) and submit(on=...) add them)."""

    kind, noun, unit = "condor", "HTCondor worker set", "nodes"

    def _extra(self, record: dict) -> str:
        wanted = record["endpoints"].get("requirements", "")
        return f"<code>requirements = {html.escape(wanted)}</code>" if wanted else ""


class CondorJobs(widgets.VBox):
    """Your HTCondor jobs (your own schedd: nobody else's are there), with Remove."""

    def __init__(self, **kwargs):
        self.table = widgets.HTML()
        self.note = widgets.HTML()
        self.job_id = widgets.Text(description="Job", placeholder="cluster.proc", layout={"width": "220px"})
        self.remove_button = widgets.Button(description="Remove", button_style="danger")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.remove_button.on_click(lambda _: self.remove(self.job_id.value))
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__(children=[widgets.HTML("<h3>HTCondor jobs</h3>"), self.table,
                                   widgets.HBox([self.job_id, self.remove_button, self.refresh_button]), self.note],
                         **kwargs)
        self.refresh()

    @staticmethod
    def _schedd():
        import pwd

        import htcondor2 as htcondor

        if not os.environ.get("_CONDOR_SEC_TOKEN_DIRECTORY"):
            raise RuntimeError("this platform runs no HTCondor pool (the session got no token)")
        me = pwd.getpwuid(os.getuid()).pw_name
        return htcondor.Schedd(htcondor.Collector().locate(htcondor.DaemonType.Schedd, f"{me}@officina"))

    def refresh(self) -> None:
        try:
            ads = self._schedd().query(projection=["ClusterId", "ProcId", "JobStatus", "Cmd", "QDate"])
        except Exception as exc:
            self.table.value = f'<span style="{_ERROR}">{html.escape(str(exc))}</span>'
            return
        names = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held"}
        rows = "".join(
            f"<tr><td>{ad['ClusterId']}.{ad['ProcId']}</td><td>{names.get(ad['JobStatus'], ad['JobStatus'])}</td>"
            f"<td>{html.escape(str(ad.get('Cmd', '')))}</td>"
            f"<td>{time.strftime('%H:%M:%S', time.localtime(ad.get('QDate', 0)))}</td></tr>"
            for ad in ads)
        self.table.value = ("<table><tr><th>job</th><th>status</th><th>command</th><th>queued</th></tr>"
                            f"{rows}</table>" if rows else "<i>No jobs in your queue.</i>")

    def remove(self, job_id: str) -> None:
        import htcondor2 as htcondor

        try:
            cluster, _, proc = job_id.strip().partition(".")
            constraint = f"ClusterId == {int(cluster)}" + (f" && ProcId == {int(proc)}" if proc else "")
            self._schedd().act(htcondor.JobAction.Remove, constraint)
            self.note.value = f'<span style="{_OK}">removed {html.escape(job_id)}</span>'
        except ValueError:
            self.note.value = f'<span style="{_ERROR}">Job: give cluster or cluster.proc, got {html.escape(job_id)!s}</span>'
        except Exception as exc:
            self.note.value = f'<span style="{_ERROR}">Removing {html.escape(job_id)}: {html.escape(str(exc))}</span>'
        self.refresh()


class Clusters(widgets.Tab):
    """Dask, Spark and HTCondor in one panel; a kind this platform does not run says why."""

    def __init__(self, **kwargs):
        from .dask_clusters import DaskClusters

        panels, titles = [], []
        for title, make in (("Dask", DaskClusters), ("Spark", SparkClusters), ("HTCondor", _condor_tab)):
            try:
                panels.append(make())
            except Exception as exc:  # not configured here: say so in its tab
                panels.append(widgets.HTML(f'<span style="{_ERROR}">{html.escape(str(exc))}</span>'))
            titles.append(title)
        super().__init__(children=panels, **kwargs)
        for index, title in enumerate(titles):
            self.set_title(index, title)


def _condor_tab() -> widgets.Widget:
    """Your jobs, and your execute nodes when the platform offers them."""
    jobs = CondorJobs()
    try:
        workers = CondorWorkers()
    except Exception as exc:  # no resource manager, or no condor kind: say so above the jobs
        workers = widgets.HTML(f'<span style="{_ERROR}">{html.escape(str(exc))}</span>')
    box = widgets.VBox([workers, jobs])
    box.workers, box.jobs = workers, jobs
    return box
