"""CPU and GPU sessions from one profile catalogue, through the real login, form and spawn.

The machine has no GPU: the tests declare a GPU inventory (sessions.gpus), which is the
documented way to run the pool without one; the allocation logic is the same.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import urljoin

import httpx
import psutil
import pytest

from platform_harness import HubSession, run_in_kernel, start_platform

pytestmark = pytest.mark.timeout(600)

INVENTORY = [{"index": 0, "model": "a100"}, {"index": 1, "model": "a100"}]


@pytest.fixture(scope="module")
def gpu_platform(platform_roots):
    platform = start_platform(
        platform_roots("profiles"),
        sessions={"gpus": INVENTORY, "max_named_servers": 3, "idle_timeout": 0},
    )
    yield platform
    try:
        platform.down()
    finally:
        platform.emergency_stop()


def spawn_path(person: HubSession, server: str) -> str:
    return f"hub/spawn/{person.username}" + (f"/{server}" if server else "")


def form(platform, person: HubSession, server: str = "") -> tuple[httpx.Response, dict[str, dict]]:
    """The spawn form as the user gets it: profile -> {enabled, note}."""
    page = person.http.get(urljoin(platform.url, spawn_path(person, server)))
    profiles = {}
    for label in re.findall(r'<label class="officina-profile".*?</label>', page.text, re.S):
        slug = re.search(r'data-profile="([^"]+)"', label).group(1)
        note = re.search(r'officina-profile-note">([^<]*)<', label)
        profiles[slug] = {"enabled": " disabled" not in label.split(">", 2)[1], "note": note.group(1) if note else ""}
    return page, profiles


def submit(platform, person: HubSession, server: str, **fields) -> httpx.Response:
    data = {"_xsrf": person.xsrf_headers()["X-XSRFToken"], **fields}
    return person.http.post(urljoin(platform.url, spawn_path(person, server)), data=data)


def page_error(response: httpx.Response) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text)).replace("&#39;", "'")
    match = re.search(r"Error: (.*?)(?: Small CPU| Large CPU| 1 GPU|$)", text)
    return match.group(1) if match else ""


def wait_ready(platform, person: HubSession, server: str, timeout: float = 90) -> dict:
    """Poll the session's own status API until it answers; return it."""
    token = person.token()
    url = urljoin(platform.url, f"user/{person.username}/{server + '/' if server else ''}officina/api/status")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(url, headers={"Authorization": f"token {token}"}, timeout=10)
        if r.status_code == 200:
            return r.json()
        time.sleep(0.5)
    raise AssertionError(f"{person.username}/{server} not ready")


def server_environ(platform, user: str, server: str) -> dict:
    key = f"{user}--{server}" if server else user
    pid = json.loads((platform.state_dir / "run" / "servers" / f"{key}.pid").read_text())["pid"]
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


# user -> (profiles in the form, the GPU profile's availability as shown)
VISIBLE = {
    "alice": {"cpu-small", "cpu-large"},
    "admin": {"cpu-small", "cpu-large"},
    "bob": {"cpu-small", "cpu-large", "gpu"},
}


@pytest.mark.parametrize("user", list(VISIBLE))
def test_form_shows_exactly_the_profiles_the_groups_allow(gpu_platform, user):
    person = HubSession(gpu_platform, user)
    person.login_without_session()
    page, profiles = form(gpu_platform, person)
    assert page.status_code == 200
    assert set(profiles) == VISIBLE[user]
    if "gpu" in profiles:
        assert profiles["gpu"]["enabled"] and "2 of 2 GPUs free" in profiles["gpu"]["note"]


def test_forged_and_out_of_range_choices_are_refused(gpu_platform):
    alice = HubSession(gpu_platform, "alice")
    alice.login_without_session()
    forged = submit(gpu_platform, alice, "", profile="gpu")
    assert forged.status_code == 400
    assert "reserved for members of officina/gpu" in page_error(forged)
    unknown = submit(gpu_platform, alice, "", profile="root-shell")
    assert "Unknown profile 'root-shell'" in page_error(unknown)
    too_big = submit(gpu_platform, alice, "", profile="cpu-small", memory_gb="100")
    assert "100 GB is outside what 'Small CPU' allows (1 to 2 GB)" in page_error(too_big)
    not_a_number = submit(gpu_platform, alice, "", profile="cpu-small", memory_gb="lots")
    assert "'lots' is not a number of GB" in page_error(not_a_number)
    # The REST API is checked the same way (it bypasses the form).
    api = alice.hub_api("POST", "users/alice/server", json={"profile": "gpu"})
    assert api.status_code == 400 and "reserved for members of officina/gpu" in api.json()["message"]
    assert not alice.hub_api("GET", "users/alice").json()["servers"]


def test_chosen_profile_is_what_the_session_gets_and_memory_is_enforced(gpu_platform):
    alice = HubSession(gpu_platform, "alice")
    alice.login_without_session()
    started = submit(gpu_platform, alice, "big", profile="cpu-large", memory_gb="6")
    assert started.status_code == 200, page_error(started)
    status = wait_ready(gpu_platform, alice, "big")
    assert status["profile"] == "cpu-large"
    assert status["memory_limit"] == 6 * 1024**3 and status["cpu_limit"] == 4
    assert status["limits"] in ("cgroup1", "cgroup2", "rlimit")
    assert status["gpus"] == []

    small = submit(gpu_platform, alice, "small", profile="cpu-small")
    assert small.status_code == 200, page_error(small)
    wait_ready(gpu_platform, alice, "small")
    cell = run_in_kernel(gpu_platform, "alice", alice.token(), "x = bytearray(3 * 1024**3)", server_name="small")
    assert cell["error"] == "MemoryError"
    assert "profile 'cpu-small' allows 2.0 GB of memory" in cell["stdout"]
    # The kernel survives and keeps working after the refused allocation.
    after = run_in_kernel(gpu_platform, "alice", alice.token(), "print(6 * 7)", server_name="small")
    assert after["stdout"].strip() == "42"


def test_gpu_pool_gives_distinct_devices_and_refuses_a_third(gpu_platform):
    bob = HubSession(gpu_platform, "bob")
    bob.login_without_session()
    for server in ("g1", "g2"):
        r = submit(gpu_platform, bob, server, profile="gpu")
        assert r.status_code == 200, page_error(r)
        wait_ready(gpu_platform, bob, server)
    devices = {server_environ(gpu_platform, "bob", s)["CUDA_VISIBLE_DEVICES"] for s in ("g1", "g2")}
    assert devices == {"0", "1"}

    _, profiles = form(gpu_platform, bob, "g3")
    assert not profiles["gpu"]["enabled"]
    assert "No GPU free right now: 0 of 2 free" in profiles["gpu"]["note"]
    third = submit(gpu_platform, bob, "g3", profile="gpu")
    assert "No GPU free right now: 0 of 2 a100 GPUs free" in third.text.replace("&#39;", "'") or \
        "No GPU free right now" in third.text, third.text[-3000:]
    # CPU sessions see no GPU at all.
    cpu = submit(gpu_platform, bob, "g3", profile="cpu-small")
    assert cpu.status_code == 200, page_error(cpu)
    wait_ready(gpu_platform, bob, "g3")
    assert server_environ(gpu_platform, "bob", "g3")["CUDA_VISIBLE_DEVICES"] == ""

    # Stopping a GPU session gives its device back.
    stop = bob.hub_api("DELETE", "users/bob/servers/g1")
    assert stop.status_code in (202, 204)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, profiles = form(gpu_platform, bob, "g1")
        if "1 of 2 GPUs free" in profiles["gpu"]["note"]:
            break
        time.sleep(0.5)
    assert "1 of 2 GPUs free" in profiles["gpu"]["note"]


def test_hub_restart_finds_every_running_server(gpu_platform):
    bob = HubSession(gpu_platform, "bob")
    bob.login_without_session()
    before = {name: s["ready"] for name, s in bob.hub_api("GET", "users/bob").json()["servers"].items()}
    assert before and all(before.values()), before
    claims = json.loads((gpu_platform.state_dir / "run" / "gpus.json").read_text())

    hub_pid = int((gpu_platform.state_dir / "run" / "jupyterhub.pid").read_text())
    psutil.Process(hub_pid).kill()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            r = bob.hub_api("GET", "users/bob")
            if r.status_code == 200 and int((gpu_platform.state_dir / "run" / "jupyterhub.pid").read_text()) != hub_pid:
                break
        except (httpx.HTTPError, ValueError, OSError):
            pass
        time.sleep(1)
    after = {name: s["ready"] for name, s in bob.hub_api("GET", "users/bob").json()["servers"].items()}
    assert after == before
    for server in after:
        assert wait_ready(gpu_platform, bob, server)["profile"] in ("gpu", "cpu-small")
    assert json.loads((gpu_platform.state_dir / "run" / "gpus.json").read_text()).keys() == claims.keys()
