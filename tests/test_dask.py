"""Dask clusters through the real dask-gateway (a JupyterHub service): real schedulers and
workers, run as the user's own account."""

from __future__ import annotations

import os
import pwd
import re
import time

import httpx
import pytest
from dask_gateway import Gateway
from dask_gateway.auth import JupyterHubAuth

from platform_harness import HubSession, run_in_kernel, start_platform, wait_for

pytestmark = pytest.mark.timeout(300)

# bob (officina/gpu) gets a tight entry, everyone else (alice) the general one; a short idle
# timeout so the idle test does not wait half an hour.
DASK_SETTINGS = {
    "idle_timeout": 40,
    "limits": [
        {"groups": ["officina/gpu"], "max_clusters": 1, "max_cores": 1, "max_memory": "2G"},
        {"groups": [], "max_clusters": 2, "max_cores": 4, "max_memory": "8G"},
    ],
}


@pytest.fixture(scope="module")
def platform(platform_roots):
    p = start_platform(platform_roots("dask"), dask=DASK_SETTINGS)
    yield p
    try:
        p.down()
    finally:
        p.emergency_stop()


def gateway_for(platform, person: HubSession) -> Gateway:
    # What a session gets in DASK_GATEWAY__* (the public address: dashboards via the hub).
    return Gateway(platform.gateway_url, proxy_address=f"gateway://127.0.0.1:{platform.config['dask']['port']}",
                   public_address=f"{platform.url}services/dask-dashboards",
                   auth=JupyterHubAuth(api_token=person.token()))


@pytest.fixture(scope="module")
def alice(platform):
    person = HubSession(platform, "alice")
    person.login()
    person.start_server()  # creates her account and home (and so her token file)
    return person


@pytest.fixture(scope="module")
def bob(platform):
    person = HubSession(platform, "bob")
    person.login()
    person.start_server()
    return person


def stop_all(gateway: Gateway) -> None:
    for report in gateway.list_clusters():
        gateway.stop_cluster(report.name)
    wait_for(lambda: not gateway.list_clusters(), 60, "clusters to stop")


def test_create_scale_compute_stop(platform, alice):
    gateway = gateway_for(platform, alice)
    cluster = gateway.new_cluster()
    try:
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        assert client.submit(sum, range(10)).result() == 45
        # Scheduler and workers run as alice's own account, never root.
        uids = set(client.run(os.getuid).values())
        expected = pwd.getpwnam("officina-alice").pw_uid if os.geteuid() == 0 else os.getuid()
        assert uids == {expected}
        assert client.run_on_scheduler(os.getuid) == expected
        assert [c.name for c in gateway.list_clusters()] == [cluster.name]
        client.close()
    finally:
        cluster.shutdown()
    deadline = time.monotonic() + 30
    while gateway.list_clusters() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert gateway.list_clusters() == []
    gateway.close()


def test_workers_get_the_users_fresh_token(platform, alice):
    gateway = gateway_for(platform, alice)
    cluster = gateway.new_cluster()
    try:
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)

        def read_token():
            with open(os.environ["BEARER_TOKEN_FILE"]) as handle:
                return handle.read().strip()

        token = client.submit(read_token, pure=False).result()
        userinfo = httpx.get(platform.issuer + "userinfo", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert userinfo.status_code == 200, (userinfo.text, token[:40], len(token))
        assert userinfo.json()["preferred_username"] == "alice"
        client.close()
    finally:
        cluster.shutdown()
        gateway.close()


def test_one_user_cannot_see_connect_to_or_stop_anothers_cluster(platform, alice, bob):
    gateway = gateway_for(platform, alice)
    cluster = gateway.new_cluster()
    intruder = gateway_for(platform, bob)
    try:
        assert intruder.list_clusters() == []
        with pytest.raises(Exception, match="403|404|not found"):
            intruder.connect(cluster.name)
        try:
            intruder.stop_cluster(cluster.name)
        except Exception as err:  # noqa: BLE001 - refused is as good as ignored here
            assert "403" in str(err) or "404" in str(err), str(err)
        assert [c.name for c in gateway.list_clusters()] == [cluster.name]
        # Without any token the gateway refuses outright.
        assert httpx.get(f"{platform.gateway_url}/api/v1/clusters/", timeout=10).status_code in (401, 403)
        # The dashboard: alice sees it through the hub; bob, logged in, gets "no such cluster";
        # nobody gets it from the gateway's own port (upstream serves it there to anyone).
        link = cluster.dashboard_link
        assert link.startswith(f"{platform.url}services/dask-dashboards/clusters/{cluster.name}/"), link
        mine = alice.http.get(link)
        assert mine.status_code == 200 and "<title>Dask" in mine.text, mine.text[:300]
        theirs = bob.http.get(link)
        assert theirs.status_code == 404 and f"no running Dask cluster named {cluster.name}" in theirs.text
        assert "Dask" not in theirs.text.replace("Dask cluster", "")
        anonymous = httpx.get(link, timeout=10)
        assert anonymous.status_code == 302 and "/hub/api/oauth2/authorize" in anonymous.headers["location"]
        direct = httpx.get(f"{platform.gateway_url}/clusters/{cluster.name}/status", timeout=10)
        assert direct.status_code == 404
    finally:
        cluster.shutdown()
        gateway.close()
        intruder.close()


def test_one_line_cluster_from_a_notebook_kernel(platform, alice):
    """What a user types in a notebook: officina.lab.dask(workers=2), then compute."""
    from platform_harness import run_in_kernel

    code = (
        "import officina.lab as officina\n"
        "client = officina.dask(workers=2)\n"
        "print('workers', len(client.scheduler_info()['workers']))\n"
        "print('result', client.submit(sum, range(100)).result())\n"
        "print('listed', [c.name for c in officina.dask_clusters()] == [client.cluster.name])\n"
        "client.cluster.shutdown()\n"
    )
    cell = run_in_kernel(platform, "alice", alice.token(), code, timeout=180)
    assert cell["error"] is None, cell
    assert "workers 2" in cell["stdout"] and "result 4950" in cell["stdout"] and "listed True" in cell["stdout"]


def test_bad_worker_count_is_a_clear_error(platform, alice):
    from platform_harness import run_in_kernel

    cell = run_in_kernel(platform, "alice", alice.token(), "import officina.lab as o; o.dask(workers=-3)")
    assert cell["error"] == "ValueError"
    assert "workers must be a whole number of workers, got -3" in cell["traceback"]


def options_spec(platform, person: HubSession) -> dict:
    r = httpx.get(f"{platform.gateway_url}/api/v1/options", timeout=10,
                  headers={"Authorization": f"jupyterhub {person.token()}"})
    assert r.status_code == 200, r.text
    return {f["field"]: f for f in r.json()["cluster_options"]}


def test_options_are_declared_once_and_bounded_by_the_users_group(platform, alice, bob):
    # alice: the general entry (4 cores, 8 GiB); bob: officina/gpu's (1 core, 2 GiB).
    mine, his = options_spec(platform, alice), options_spec(platform, bob)
    assert list(mine) == ["software", "worker_cores", "worker_memory", "adaptive_minimum", "adaptive_maximum"]
    # Software: the catalogue's CPU profiles each may use (the GPU profile is not for workers).
    assert mine["software"]["spec"]["options"] == ["cpu-small", "cpu-large"]
    assert mine["worker_cores"]["spec"]["max"] == 4 and mine["worker_memory"]["spec"]["max"] == 8
    assert his["worker_cores"]["spec"]["max"] == 1 and his["worker_memory"]["spec"]["max"] == 2
    # The client library's own Options object is built from the same answer.
    options = gateway_for(platform, bob).cluster_options()
    assert options.worker_cores == 1
    with pytest.raises(ValueError, match="worker_cores must be <= 1"):
        options.worker_cores = 2


@pytest.mark.parametrize("options, reason", [
    ({"worker_cores": 9}, "worker_cores: at most 4, got 9"),
    ({"worker_cores": "two"}, "worker_cores: a whole number is needed, got 'two'"),
    ({"worker_memory": -1}, "worker_memory: at least 0.25, got -1"),
    ({"software": "gpu"}, "'gpu' is not a valid option for software"),
    ({"threads": 3}, "Unknown fields ['threads']"),
    ({"adaptive_minimum": 3, "adaptive_maximum": 2}, "adaptive_minimum (3) is above adaptive_maximum (2)"),
    ({"adaptive_minimum": 5, "adaptive_maximum": 6, "worker_cores": 1}, "adaptive_minimum: 5 workers of 1 cores"),
])
def test_bad_option_values_are_refused_with_the_reason(platform, alice, options, reason):
    r = httpx.post(f"{platform.gateway_url}/api/v1/clusters/", json={"cluster_options": options}, timeout=30,
                   headers={"Authorization": f"jupyterhub {alice.token()}"})
    assert r.status_code == 422, r.text
    assert reason in r.json()["error"]
    assert gateway_for(platform, alice).list_clusters() == []  # nothing half-made


def test_each_group_limit_is_refused_with_a_message(platform, alice, bob):
    his = gateway_for(platform, bob)
    mine = gateway_for(platform, alice)
    try:
        # Memory per worker over bob's group allowance: refused naming the group.
        with pytest.raises(ValueError, match=r"worker_memory: at most 2 \(the limit of group officina/gpu\), got 3"):
            his.submit(worker_memory=3)
        # Clusters: one for bob. (Refusals are asked with submit(): dask-gateway's own
        # new_cluster() leaves a half-built client that can hang the next call, see
        # officina.lab.clusters.new_cluster.)
        first = his.new_cluster()
        with pytest.raises(ValueError, match=r"you already have 1 Dask cluster, the most the limit of group "
                                              r"officina/gpu allows \(1\); stop one first"):
            his.submit()
        # Cores: a scale over the allowance is trimmed to it, and the user is told.
        with pytest.warns(Warning, match="exceed resource limit of 1 workers. Scaling to 1 instead"):
            first.scale(3)
        # Across clusters: alice has 4 cores in all; 3 in one leaves 1 for the other.
        a, b = mine.new_cluster(), mine.new_cluster()
        a.scale(3)
        with pytest.raises(Exception, match=r"cannot scale to 2 workers, 1 fit: your limit is 4 worker cores"):
            b.scale(2)
        b.scale(1)  # what is left is allowed
        with pytest.raises(ValueError, match=r"you already have 2 Dask clusters"):
            mine.submit()
    finally:
        stop_all(his)
        stop_all(mine)
        his.close()
        mine.close()


def test_options_can_start_a_cluster_adaptive(platform, alice):
    gateway = gateway_for(platform, alice)
    try:
        cluster = gateway.new_cluster(adaptive_minimum=1, adaptive_maximum=2)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)  # nobody scaled it: the gateway did, from the options
        assert client.submit(sum, [1, 2]).result() == 3
        client.close()
    finally:
        stop_all(gateway)
        gateway.close()


def test_an_idle_cluster_stops_by_itself(platform, alice):
    gateway = gateway_for(platform, alice)
    cluster = gateway.new_cluster(shutdown_on_close=False)
    name = cluster.name
    cluster.close()  # nobody connected from now on
    started = time.monotonic()
    wait_for(lambda: name not in [c.name for c in gateway.list_clusters()], 180, "the idle cluster to stop")
    # Not before the configured timeout (40 s).
    assert time.monotonic() - started > DASK_SETTINGS["idle_timeout"] - 15
    gateway.close()


def test_clusters_outlive_a_session_restart(platform, alice):
    """Start a cluster in a notebook, restart the session, find it, use it, stop it."""
    cell = run_in_kernel(platform, "alice", alice.token(), (
        "import officina.lab as officina\n"
        "client = officina.dask(workers=1)\n"
        "print('name', client.cluster.name)\n"
    ), timeout=180)
    assert cell["error"] is None, cell
    name = cell["stdout"].split("name ", 1)[1].split()[0]
    assert alice.hub_api("DELETE", "users/alice/server").status_code in (202, 204)
    wait_for(lambda: alice.hub_api("GET", "users/alice").json()["server"] is None, 60, "the session to stop")
    alice.start_server()
    cell = run_in_kernel(platform, "alice", alice.token(), (
        "import officina.lab as officina\n"
        f"print('listed', {name!r} in [c.name for c in officina.dask_clusters()])\n"
        f"client = officina.connect_dask({name!r})\n"
        "print('result', client.submit(sum, range(5)).result())\n"
        f"officina.stop_dask({name!r})\n"
    ), timeout=180)
    assert cell["error"] is None, cell
    assert "listed True" in cell["stdout"] and "result 10" in cell["stdout"]
    wait_for(lambda: not gateway_for(platform, alice).list_clusters(), 60, "the cluster to stop")


def test_widget_creates_scales_and_stops_from_a_notebook(platform, alice):
    cell = run_in_kernel(platform, "alice", alice.token(), """
import warnings; warnings.simplefilter("ignore")
from officina.widgets import DaskClusters
w = DaskClusters()
print("form", [f for f in w.options])
w.new_workers.value = 2
w.create_button.click()
row = list(w.rows.values())[0]
print("created", row.status.value, "|", row.dashboard.value)
row.workers.value = 9
row.scale_button.click()
print("scaled", w.note.value, "|", row.status.value)
w.new_workers.value = 1
w.create_button.click()
print("second", w.note.value)
row.minimum.value, row.maximum.value = 3, 1
row.adapt_button.click()
print("adapt", w.note.value)
row.stop_button.click()
print("stopped", w.note.value, "| rows", len(w.rows))
""", timeout=240)
    assert cell["error"] is None, cell
    out = cell["stdout"]
    assert "form ['software', 'worker_cores', 'worker_memory', 'adaptive_minimum', 'adaptive_maximum']" in out
    assert "created 2 workers, 2 threads, 2.0 GiB" in out
    assert f'href="{platform.url}services/dask-dashboards/clusters/' in out
    # 9 workers of 1 core: trimmed to alice's 4 cores, said in amber, and 4 arrive.
    assert "Scaling to 4 instead" in out and "4 workers, 4 threads" in out
    # No cores left for a second cluster: refused in the gateway's words, nothing left behind.
    assert "cannot scale to 1 workers, 0 fit" in out and "(the new cluster was stopped)" in out
    assert "Min (3) is above Max (1)" in out
    assert "stopped" in out and "| rows 0" in out
    wait_for(lambda: not gateway_for(platform, alice).list_clusters(), 60, "clusters to stop")


def share_login(context, person: HubSession) -> None:
    """The browser continues as the person logged in over HTTP (their hub cookies)."""
    context.add_cookies([{"name": c.name, "value": c.value, "domain": "127.0.0.1", "path": c.path}
                         for c in person.http.cookies.jar])


def test_the_widget_works_in_a_voila_app(platform, alice, chromium):
    """A basic user's view: a Voila page with the widget, driven by clicks."""
    from playwright.sync_api import expect

    token = alice.token()
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                           "source": "from officina.widgets import DaskClusters\nDaskClusters()"}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    r = httpx.put(f"{platform.url}user/alice/api/contents/clusters-app.ipynb", timeout=30,
                  headers={"Authorization": f"token {token}"},
                  json={"type": "notebook", "format": "json", "content": notebook})
    assert r.status_code in (200, 201), r.text
    context = chromium.new_context()
    try:
        share_login(context, alice)
        page = context.new_page()
        page.goto(f"{platform.url}user/alice/voila/render/clusters-app.ipynb", timeout=120_000)
        page.get_by_role("button", name="Create cluster").click(timeout=120_000)
        expect(page.get_by_text(re.compile(r"created [0-9a-f]{32} with 2 workers"))).to_be_visible(timeout=180_000)
        expect(page.get_by_text("2 workers, 2 threads")).to_be_visible()
        link = page.get_by_role("link", name="Dashboard")
        assert link.get_attribute("href").startswith(f"{platform.url}services/dask-dashboards/clusters/")
        page.get_by_role("button", name="Stop").click()
        expect(page.get_by_text(re.compile(r"stopped [0-9a-f]{32}"))).to_be_visible(timeout=60_000)
        expect(page.get_by_text("No clusters running.")).to_be_visible()
    finally:
        context.close()
        stop_all(gateway_for(platform, alice))


def test_dashboard_plots_load_in_a_browser(platform, alice, chromium):
    """The dashboard is a Bokeh app: its plots arrive over a websocket through the hub."""
    gateway = gateway_for(platform, alice)
    cluster = gateway.new_cluster()
    context = chromium.new_context()
    try:
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)
        share_login(context, alice)
        page = context.new_page()
        page.goto(cluster.dashboard_link)
        page.wait_for_url(f"{platform.url}services/dask-dashboards/clusters/{cluster.name}/status")
        # Bokeh draws each plot on a canvas once the websocket session is up.
        page.locator("canvas").first.wait_for(state="attached", timeout=60_000)
        assert page.title().startswith("Dask")
        client.close()
    finally:
        context.close()
        stop_all(gateway)
        gateway.close()


def test_hub_log_lines_all_format(platform):
    # dask_gateway_server, imported into the hub, once replaced JupyterHub's log formatting.
    log = (platform.state_dir / "logs" / "jupyterhub.log").read_text()
    assert "Logging error" not in log
