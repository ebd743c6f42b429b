"""`officina down` and Ctrl-C end everything the platform started; a restart keeps users and files."""

from __future__ import annotations

import signal

import httpx
import psutil
import pytest

from platform_harness import start_platform
from platform_harness import HubSession

pytestmark = pytest.mark.timeout(400)


def alive(procs):
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_down_leaves_nothing_behind_and_restart_keeps_users_and_files(platform_roots):
    platform = start_platform(platform_roots("lifecycle"))
    try:
        alice = HubSession(platform, "alice")
        alice.login()
        alice.start_server()
        token = alice.token()
        headers = {"Authorization": f"token {token}"}
        contents = f"{platform.url}user/alice/api/contents/analysis.txt"
        r = httpx.put(contents, headers=headers, json={"type": "file", "format": "text", "content": "histogram v1"})
        assert r.status_code in (200, 201), r.text
        # A kernel too, so that `down` has grandchildren to end.
        assert httpx.post(f"{platform.url}user/alice/api/kernels", headers=headers, json={}, timeout=60).status_code == 201

        family = platform.process_family()
        assert len(family) >= 7, family  # supervisor, 4 components, alice's server, her kernel
        result = platform.down()
        assert result.returncode == 0, result.stderr
        assert "Officina stopped" in result.stdout
        assert platform.proc.returncode == 0
        assert alive(family) == []
        status = platform.cli("status")
        assert status.returncode == 3 and "not running" in status.stdout
        again = platform.cli("down")
        assert again.returncode == 1 and "not running" in again.stdout

        platform.up()
        alice = HubSession(platform, "alice")
        alice.login()
        alice.start_server()
        token = alice.token()
        r = httpx.get(contents, headers={"Authorization": f"token {token}"})
        assert r.status_code == 200 and r.json()["content"] == "histogram v1"
        admin = HubSession(platform, "admin")
        admin.login()
        assert "alice" in [u["name"] for u in admin.hub_api("GET", "users").json()]
    finally:
        platform.down()
        platform.emergency_stop()


def test_ctrl_c_stops_everything(platform_roots):
    platform = start_platform(platform_roots("lifecycle"))
    try:
        family = platform.process_family()
        platform.proc.send_signal(signal.SIGINT)
        assert platform.proc.wait(120) == 0
        assert alive(family) == []
        assert "stopped" in platform.log_file.read_text()
    finally:
        platform.emergency_stop()
