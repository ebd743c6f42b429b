"""The running embedded platform: health, one instance, sessions, isolation, crash recovery."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import httpx
import psutil
import pytest

from platform_harness import OFFICINA, HubSession, run_in_terminal, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def alice(platform):
    session = HubSession(platform, "alice")
    session.login()
    session.start_server()
    session.api_token = session.token()
    return session


def test_status_reports_every_component_healthy(platform):
    result = platform.cli("status")
    assert result.returncode == 0, result.stdout + result.stderr
    for component in ("iam-standin", "proxy", "jupyterhub", "idle-culler"):
        line = next(l for l in result.stdout.splitlines() if l.startswith(component))
        assert line.endswith("healthy"), line
    assert f"running at {platform.url}" in result.stdout


def test_up_says_why_it_runs_no_htcondor_pool_and_how_to_get_one(platform):
    # The harness names a root that does not exist (condor.enabled: auto).
    root = platform.root / "no-condor-root"
    banner = platform.log_file.read_text()
    assert f"HTCondor pool not started: no HTCondor root at {root}: run `scripts/condor-root.sh {root}`" in banner
    assert "htcondor" not in platform.cli("status").stdout


def test_a_second_up_is_refused(platform):
    result = platform.cli("up", timeout=60)
    assert result.returncode == 1
    assert "already running" in result.stderr and "officina down" in result.stderr
    # ... and the first one is untouched.
    assert platform.cli("status").returncode == 0


def test_session_runs_jupyterlab_with_the_officina_extension(platform, alice):
    r = httpx.get(
        f"{platform.url}user/alice/officina/api/status",
        headers={"Authorization": f"token {alice.api_token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["hub_user"] == "alice"
    assert status["home"] == str(platform.state_dir / "homes" / "alice")
    if os.geteuid() == 0:
        assert status["account"] == "officina-alice"
        assert status["uid"] != 0


def test_outsider_is_refused_with_the_reason(platform):
    mallory = HubSession(platform, "mallory")
    final = mallory.login()
    assert final.status_code == 403
    assert "not a member of any group allowed on this platform" in final.text
    assert "visitors" in final.text and "officina" in final.text
    # Refused users get no session and no hub account that could spawn one.
    admin = HubSession(platform, "admin")
    admin.login()
    assert admin.hub_api("GET", "users/mallory").status_code == 404


def test_admin_group_member_is_hub_admin_and_groups_are_synced(platform):
    admin = HubSession(platform, "admin")
    admin.login()
    me = admin.hub_api("GET", "user").json()
    assert me["admin"] is True
    assert "officina/admins" in me["groups"] and "officina" in me["groups"]
    alice = admin.hub_api("GET", "users/alice").json()
    assert alice["admin"] is False
    assert set(alice["groups"]) >= {"officina", "officina/users"}


def test_state_directory_is_owner_only(platform):
    state = platform.state_dir
    for folder in ("hub", "secrets", "iam", "run", "logs"):
        assert stat.S_IMODE((state / folder).stat().st_mode) == 0o700, folder
    for secret in (state / "secrets").iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    # Others may traverse the root to reach their own home, never list it.
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 in (0, 0o011)
    home = state / "homes" / "alice"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_no_secret_in_any_process_arguments_or_logs(platform, alice):
    secrets = [(platform.state_dir / "secrets" / name).read_text().strip() for name in os.listdir(platform.state_dir / "secrets")]
    family = platform.process_family()
    assert len(family) >= 5  # supervisor, stand-in, proxy, hub, culler, alice's server
    for proc in family:
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        for secret in secrets:
            assert secret not in cmdline, f"a secret is in the arguments of pid {proc.pid}"
    for log in (platform.state_dir / "logs").iterdir():
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret is in {log.name}"


@pytest.mark.skipif(os.geteuid() != 0, reason="per-user accounts exist only when the platform runs as root")
def test_users_are_isolated_and_terminals_have_no_root(platform, alice):
    bob = HubSession(platform, "bob")
    bob.login()
    bob.start_server()
    bob_home = platform.state_dir / "homes" / "bob"
    (bob_home / "secret-notes.txt").write_text("bob's")
    os.chown(bob_home / "secret-notes.txt", bob_home.stat().st_uid, bob_home.stat().st_gid)
    bob_server_pid = json.loads((platform.state_dir / "run" / "servers" / "bob.pid").read_text())["pid"]

    out = run_in_terminal(
        platform, "alice", alice.api_token,
        f"id -u; grep NoNewPrivs /proc/self/status; cat {bob_home}/secret-notes.txt; ls {bob_home}; "
        f"kill -0 {bob_server_pid}; su -c id root </dev/null; echo su-exit=$?",
    )
    lines = out.splitlines()
    uid = int(next(l for l in lines if l.strip().isdigit()))
    assert uid != 0 and uid == os.stat(platform.state_dir / "homes" / "alice").st_uid
    assert "NoNewPrivs:\t1" in out
    assert out.count("Permission denied") >= 2, out  # cat and ls of bob's home
    assert "bob's" not in out
    assert "Operation not permitted" in out  # kill -0 on bob's server
    assert "su-exit=0" not in out and "uid=0(root)" not in out


def test_crashed_proxy_is_restarted_and_routes_come_back(platform, alice):
    old_pid = platform.component_pid("proxy")
    psutil.Process(old_pid).kill()
    wait_for(lambda: platform.table()["components"]["proxy"]["pid"] != old_pid
             and platform.cli("status").returncode == 0, timeout=60, what="the proxy to be restarted")
    assert platform.table()["components"]["proxy"]["restarts"] == 1
    # The hub puts alice's route back: her session answers through the proxy again.
    wait_for(lambda: alice.http.get(f"{platform.url}user/alice/lab").status_code == 200, timeout=30,
             what="alice's route to come back")
    log = platform.log_file.read_text()
    assert f"proxy (pid {old_pid}) exited unexpectedly" in log


def test_crashed_hub_is_restarted_and_finds_running_sessions(platform, alice):
    server_pid = json.loads((platform.state_dir / "run" / "servers" / "alice.pid").read_text())["pid"]
    old_pid = platform.component_pid("jupyterhub")
    psutil.Process(old_pid).kill()
    wait_for(lambda: platform.table()["components"]["jupyterhub"]["pid"] != old_pid
             and platform.cli("status").returncode == 0, timeout=90, what="the hub to be restarted")
    # Same session process, still reachable, and the hub knows it is running.
    assert psutil.pid_exists(server_pid)
    r = alice.http.get(f"{platform.url}user/alice/lab")
    assert r.status_code == 200 and "jupyter-config-data" in r.text
    assert alice.hub_api("GET", "user").json()["servers"][""]["ready"] is True
    # The hub's own services went with the killed hub and came back with the new one: one of
    # each, children of the new hub (no orphan left holding their ports).
    hub = platform.component_pid("jupyterhub")
    expected = [("officina.hub.dask_dashboards", hub), ("officina.hub.resources.service", hub)]
    wait_for(lambda: hub_services(platform) == expected, timeout=60,
             what=f"one of each hub service, the new hub's (found {hub_services(platform)})")


def hub_services(platform) -> list[tuple[str, int]]:
    """(module, parent pid) of the services of this platform's hub (told apart from other
    platforms' by the state folder in their environment)."""
    state = str(platform.state_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        module = (proc.info["cmdline"] or [""])[-1]
        if module in ("officina.hub.dask_dashboards", "officina.hub.resources.service"):
            try:
                environment = proc.environ()
            except psutil.Error:
                continue
            if any(value.startswith(state) for value in environment.values()):
                found.append((module, proc.info["ppid"]))
    return sorted(found)


def test_gpu_profile_is_shown_disabled_with_the_reason_when_the_host_has_no_gpu(platform):
    """This machine has no GPU and the platform declares none: the GPU group sees why."""
    bob = HubSession(platform, "bob")
    bob.login_without_session()
    # A named server's form: bob's default server may already run from an earlier test.
    page = bob.http.get(f"{platform.url}hub/spawn/bob/probe")
    label = re.search(r'<label class="officina-profile" data-profile="gpu".*?</label>', page.text, re.S)
    assert label, page.text[-2000:]
    assert " disabled" in label.group(0) and "This machine has no GPUs." in label.group(0)
    refused = bob.hub_api("POST", "users/bob/servers/probe", json={"profile": "gpu"})
    assert refused.status_code == 409 and "This machine has no GPUs." in refused.json()["message"]
