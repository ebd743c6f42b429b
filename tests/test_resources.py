"""The resource manager (a JupyterHub service) with real Spark standalone clusters, started on
the hub's side for users who ask with their JupyterHub token."""

from __future__ import annotations

import pwd
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from platform_harness import HubSession, run_in_kernel, start_platform, wait_for

pytestmark = pytest.mark.timeout(600)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

RESOURCES = {
    "idle_timeout": 60,
    "limits": [
        {"groups": ["officina/gpu"], "max_resources": 1, "max_cores": 1, "max_memory": "1G"},
        {"groups": [], "max_resources": 2, "max_cores": 3, "max_memory": "4G"},
    ],
    "spark": {"options": {"workers": {"default": 1, "max": 4}, "worker_memory": {"default": 0.5, "max": 2}}},
}


@pytest.fixture(scope="module")
def platform(platform_roots):
    p = start_platform(platform_roots("resources"), resources=RESOURCES, dask={"enabled": False})
    yield p
    try:
        p.down()
    finally:
        p.emergency_stop()


class Person:
    def __init__(self, platform, name: str):
        self.session = HubSession(platform, name)
        self.session.login()
        self.session.start_server()
        self.token = self.session.token()
        self.api = httpx.Client(base_url=f"{platform.url}services/resources/api/", timeout=60,
                                headers={"Authorization": f"token {self.token}"})
        # The hub starts its services beside itself: the manager may still be coming up.
        wait_for(lambda: self.api.get("kinds").status_code == 200, 60, "the resource manager to answer")

    def wait(self, resource_id: str, phase: str, timeout: float = 180) -> dict:
        def reached():
            record = self.api.get(f"resources/{resource_id}").json()
            if record["phase"] == "failed" and phase != "failed":
                raise AssertionError(record)
            return record if record["phase"] == phase else None
        return wait_for(reached, timeout, f"resource {resource_id} to be {phase}")


@pytest.fixture(scope="module")
def alice(platform):
    return Person(platform, "alice")


@pytest.fixture(scope="module")
def bob(platform):
    return Person(platform, "bob")


def spark_processes(resource_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "uids"]):
        if any(resource_id in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def test_kinds_are_declared_once(platform, alice):
    kinds = alice.api.get("kinds").json()
    spark = kinds["spark"]["properties"]
    assert spark["workers"] == {"type": "integer", "title": "Workers", "default": 1, "minimum": 0, "maximum": 4}
    assert spark["worker_memory"]["maximum"] == 2 and spark["worker_cores"]["maximum"] == 4


def test_the_api_needs_a_token_with_the_scope(platform, alice):
    anonymous = httpx.get(f"{platform.url}services/resources/api/resources", timeout=30, follow_redirects=False)
    assert anonymous.status_code in (401, 403) and "token" in anonymous.json()["error"]
    narrow = alice.session.hub_api("POST", "users/alice/tokens", json={"scopes": ["read:users:name!user"]}).json()
    r = httpx.get(f"{platform.url}services/resources/api/resources", timeout=30,
                  headers={"Authorization": f"token {narrow['token']}"})
    assert r.status_code == 403, r.text
    assert "custom:officina:resources" in r.json()["error"]


@pytest.mark.parametrize("body, reason", [
    ({"kind": "yarn"}, "kind: unknown kind 'yarn' (known: app, model, spark)"),
    ({}, "kind: one of app, model, spark is needed"),
    ({"kind": "spark", "workers": 9}, "workers: at most 4, got 9"),
    ({"kind": "spark", "workers": "two"}, "workers: a whole number is needed, got 'two'"),
    ({"kind": "spark", "worker_memory": 0.1}, "worker_memory: at least 0.5, got 0.1"),
    ({"kind": "spark", "executors": 2}, "unknown option executors for spark"),
])
def test_bad_requests_are_400_with_the_reason(platform, alice, body, reason):
    r = alice.api.post("resources", json=body)
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]
    assert alice.api.get("resources").json() == [] or all(x["phase"] != "starting" for x in alice.api.get("resources").json())


def test_not_json_is_400(platform, alice):
    r = alice.api.post("resources", content=b"{workers:", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "the request body is not JSON"


def test_spark_from_a_notebook_job_scale_delete(platform, alice):
    """What a user types: officina.spark(workers=2), a job, then scale and stop it."""
    cell = run_in_kernel(platform, "alice", alice.token, (
        "import officina.lab as officina\n"
        "spark = officina.spark(workers=2)\n"
        "print('id', spark.officina_cluster['id'])\n"
        "print('sum', spark.range(1000000).selectExpr('sum(id) as s').collect()[0].s)\n"
        "print('executors', spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1)\n"
        "print('app-ui', spark.officina_app_ui)\n"
    ), timeout=300)
    assert cell["error"] is None, cell
    assert "sum 499999500000" in cell["stdout"]
    resource_id = cell["stdout"].split("id ", 1)[1].split()[0]
    # The application's own UI (jobs, stages), through the master's proxy on the hub (the
    # kernel's driver has ended with the cell: it is checked while running in the panel test).
    app_ui = cell["stdout"].split("app-ui ", 1)[1].split()[0]
    assert app_ui.startswith(f"{platform.url}services/resources/ui/{resource_id}/proxy/app-"), app_ui
    record = alice.api.get(f"resources/{resource_id}").json()
    assert record["phase"] == "running" and record["workers"] == 2 and record["owner"] == "alice"
    assert record["endpoints"]["master"].startswith("spark://127.0.0.1:")
    assert "state" not in record  # the backend's private record stays on the hub
    # Master and workers run as alice's account, never root.
    procs = spark_processes(resource_id)
    assert len(procs) >= 3, [p.info["cmdline"][:3] for p in procs]
    uid = pwd.getpwnam("officina-alice").pw_uid
    assert {p.info["uids"].real for p in procs} == {uid}
    # Scale down, then delete: nothing of it is left.
    r = alice.api.patch(f"resources/{resource_id}", json={"workers": 1})
    assert r.status_code == 200 and r.json()["workers"] == 1, r.text
    assert alice.api.delete(f"resources/{resource_id}").json()["phase"] == "stopped"
    wait_for(lambda: not spark_processes(resource_id), 30, "Spark processes to end")


def test_one_user_cannot_see_or_touch_anothers_cluster(platform, alice, bob):
    created = alice.api.post("resources", json={"kind": "spark", "workers": 1})
    assert created.status_code == 202, created.text
    resource_id = created.json()["id"]
    try:
        record = alice.wait(resource_id, "running")
        assert bob.api.get("resources").json() == []
        for method, kwargs in (("GET", {}), ("PATCH", {"json": {"workers": 2}}), ("DELETE", {})):
            r = bob.api.request(method, f"resources/{resource_id}", **kwargs)
            assert r.status_code == 404 and f"you have no resource {resource_id}" in r.json()["error"]
        # The cluster's secret: never to bob; not even to alice over HTTP on one machine (her
        # 0600 file holds it; the API gives it out only where the cluster is pods).
        r = bob.api.get(f"resources/{resource_id}/secret")
        assert r.status_code == 404 and f"you have no resource {resource_id}" in r.json()["error"]
        r = alice.api.get(f"resources/{resource_id}/secret")
        assert r.status_code == 404 and "has no secret to give out here" in r.json()["error"]
        # The Spark UI through the hub: alice's, behind the login; not bob's, not anonymous.
        ui = record["endpoints"]["ui"]
        assert ui == f"{platform.url}services/resources/ui/{resource_id}/"
        mine = alice.session.http.get(ui)
        assert mine.status_code == 200 and "Spark Master" in mine.text, mine.text[:300]
        theirs = bob.session.http.get(ui)
        assert theirs.status_code == 404 and "Spark Master" not in theirs.text
        anonymous = httpx.get(ui, timeout=30)
        assert anonymous.status_code == 302 and "oauth2/authorize" in anonymous.headers["location"]
    finally:
        alice.api.delete(f"resources/{resource_id}")


def test_quotas_refuse_with_a_message(platform, alice, bob):
    # bob (officina/gpu): one resource of at most 1 core.
    first = bob.api.post("resources", json={"kind": "spark", "workers": 1})
    assert first.status_code == 202, first.text
    try:
        second = bob.api.post("resources", json={"kind": "spark", "workers": 0})
        assert second.status_code == 403
        assert "the most the quota of group officina/gpu allows (1)" in second.json()["error"]
        bob.wait(first.json()["id"], "running")
        more = bob.api.patch(f"resources/{first.json()['id']}", json={"workers": 2})
        assert more.status_code == 403 and "would exceed the quota of group officina/gpu" in more.json()["error"]
        # alice: 3 cores for everything she runs.
        big = alice.api.post("resources", json={"kind": "spark", "workers": 4})
        assert big.status_code == 403 and "4 cores more would exceed the quota for everyone: 3 cores" in big.json()["error"]
    finally:
        bob.api.delete(f"resources/{first.json()['id']}")


def _service_process(platform) -> psutil.Process | None:
    for proc in platform.process_family():
        try:
            if "officina.hub.resources.service" in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_restarted_manager_finds_its_clusters_and_cleans_dead_ones(platform, alice):
    keep = alice.api.post("resources", json={"kind": "spark", "workers": 1}).json()["id"]
    lose = alice.api.post("resources", json={"kind": "spark", "workers": 1}).json()["id"]
    try:
        alice.wait(keep, "running")
        alice.wait(lose, "running")
        before = _service_process(platform)
        assert before is not None, "the resource manager is not running"
        before.send_signal(signal.SIGKILL)  # a crash: no chance to stop anything
        for proc in spark_processes(lose):
            proc.kill()  # and one cluster died with it
        wait_for(lambda: getattr(_service_process(platform), "pid", before.pid) != before.pid, 60, "the hub to restart its service")
        wait_for(lambda: alice.api.get("resources").status_code == 200, 60, "the service to answer")
        assert alice.api.get(f"resources/{keep}").json()["phase"] == "running"
        lost = alice.api.get(f"resources/{lose}").json()
        assert lost["phase"] == "failed" and "lost while the resource manager was down" in lost["message"]
        assert not spark_processes(lose)
        # The survivor still runs jobs.
        cell = run_in_kernel(platform, "alice", alice.token, (
            "from officina.lab import resources\n"
            f"s = resources.session_on(resources.Resources().get({keep!r}))\n"
            "print('count', s.range(100).count())\n"
            "s.stop()\n"
        ), timeout=300)
        assert cell["error"] is None and "count 100" in cell["stdout"], cell
    finally:
        alice.api.delete(f"resources/{keep}")


def test_an_unused_cluster_stops_by_itself(platform, alice):
    resource_id = alice.api.post("resources", json={"kind": "spark", "workers": 0}).json()["id"]
    alice.wait(resource_id, "running")
    record = alice.wait(resource_id, "stopped", timeout=RESOURCES["idle_timeout"] + 60)
    assert f"stopped after {RESOURCES['idle_timeout']} s without use" in record["message"]
    assert not spark_processes(resource_id)


def test_stopping_the_platform_stops_every_cluster(platform_roots):
    p = start_platform(platform_roots("resources-down"), resources=RESOURCES, dask={"enabled": False})
    try:
        person = Person(p, "alice")
        resource_id = person.api.post("resources", json={"kind": "spark", "workers": 1}).json()["id"]
        person.wait(resource_id, "running")
        assert spark_processes(resource_id)
        assert p.down().returncode == 0
        assert not spark_processes(resource_id)
    finally:
        p.emergency_stop()


def test_the_spark_panel_creates_scales_and_stops(platform, alice):
    cell = run_in_kernel(platform, "alice", alice.token, """
from officina.widgets import SparkClusters
w = SparkClusters()
print("fields", list(w.fields))
w.fields["workers"].value = 1
w.create_button.click()
print("created", w.note.value)
rid = list(w.rows)[0]
print("link", w.rows[rid]["title"].value)
w.rows[rid]["workers"].value = 9
w.rows[rid]["scale"].click()
print("scale", w.note.value)
w.rows[rid]["stop"].click()
print("stopped", w.note.value, "| rows", len(w.rows))
""", timeout=300)
    assert cell["error"] is None, cell
    out = cell["stdout"]
    assert "fields ['workers', 'worker_cores', 'worker_memory']" in out
    assert "created " in out and "with 1 workers" in out
    assert f'href="{platform.url}services/resources/ui/' in out
    assert "workers: at most 4, got 9 (HTTP 400)" in out
    assert "stopped " in out and "| rows 0" in out


def test_sparkmonitor_shows_a_cells_jobs_in_jupyterlab(platform, alice, bob, chromium):
    """What a person sees in JupyterLab: a cell that runs Spark jobs gets sparkmonitor's live
    table of its jobs underneath (kernel extension, listener in the driver, lab extension)."""
    from playwright.sync_api import expect

    cells = ["import officina.lab as lab\nspark = lab.spark(workers=1)",
             "total = spark.range(2_000_000, numPartitions=4).selectExpr('sum(id) AS s').collect()[0]['s']\nprint('total', total)",
             "spark.stop()\nprint(lab.stop_spark(spark.officina_cluster['id'])['phase'])"]
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": c}
                          for c in cells],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    r = httpx.put(f"{platform.url}user/alice/api/contents/sparkmonitor.ipynb", timeout=30,
                  headers={"Authorization": f"token {alice.token}"},
                  json={"type": "notebook", "format": "json", "content": notebook})
    assert r.status_code in (200, 201), r.text
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        context.add_cookies([{"name": c.name, "value": c.value, "domain": "127.0.0.1", "path": c.path}
                             for c in alice.session.http.cookies.jar])
        page.goto(f"{platform.url}user/alice/lab/tree/sparkmonitor.ipynb", timeout=120_000)
        expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible(timeout=120_000)
        page.wait_for_timeout(3000)  # the kernel connection's set-up (see test_browser.py)
        page.locator(".jp-Cell .cm-content").first.click()
        for _ in cells[:2]:
            page.keyboard.press("Shift+Enter")
        expect(page.get_by_text("total 1999999000000")).to_be_visible(timeout=240_000)
        # The running application's own UI, through the master's proxy on the hub: alice's only.
        records = alice.api.get("resources").json()
        (record,) = [r for r in records if r["phase"] == "running"]
        apps = alice.session.http.get(record["endpoints"]["ui"] + "json/").json()["activeapps"]
        app_ui = f"{record['endpoints']['ui']}proxy/{apps[0]['id']}/"
        jobs = alice.session.http.get(app_ui + "jobs/", follow_redirects=True)
        assert jobs.status_code == 200 and "Spark Jobs" in jobs.text and "collect at" in jobs.text, jobs.text[:300]
        assert bob.session.http.get(app_ui + "jobs/").status_code == 404
        # The job cell's monitor: its job table, the job completed.
        monitor = page.locator(".sparkMonitorCellRoot", has=page.locator(".jobrow"))
        expect(monitor.first).to_be_visible(timeout=60_000)
        expect(monitor.first).to_contain_text("COMPLETED", timeout=60_000)
        assert "Logging error" not in page.locator(".jp-Notebook").inner_text()
        page.keyboard.press("Shift+Enter")
        expect(page.get_by_text("stopped", exact=True)).to_be_visible(timeout=120_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "sparkmonitor.png"), full_page=True)
        raise
    finally:
        context.close()
