"""Dask clusters through the real dask-gateway (a JupyterHub service): real schedulers and
workers, run as the user's own account."""

from __future__ import annotations

import os
import pwd
import time

import httpx
import pytest
from dask_gateway import Gateway
from dask_gateway.auth import JupyterHubAuth

from platform_harness import HubSession

pytestmark = pytest.mark.timeout(300)


def gateway_for(platform, person: HubSession) -> Gateway:
    return Gateway(platform.gateway_url, proxy_address=f"gateway://127.0.0.1:{platform.config['dask']['port']}",
                   auth=JupyterHubAuth(api_token=person.token()))


@pytest.fixture(scope="module")
def alice(platform):
    person = HubSession(platform, "alice")
    person.login()
    person.start_server()  # creates her account and home (and so her token file)
    return person


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


def test_one_user_cannot_see_connect_to_or_stop_anothers_cluster(platform, alice):
    # Not yet covered: dask-gateway's proxy serves a cluster's dashboard to anyone who knows
    # its (random, 128-bit) name; an authenticated dashboard route is still to be built.
    gateway = gateway_for(platform, alice)
    cluster = gateway.new_cluster()
    bob = HubSession(platform, "bob")
    bob.login_without_session()
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
