"""HTCondor through the platform: `officina up` runs the pool, a session start mints the
user's token, and users submit from their notebooks, each seeing only their own jobs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from platform_harness import HubSession, free_ports, run_in_kernel, start_platform

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("OFFICINA_CONDOR_ROOT", "/var/cache/officina/condor-root"))

SUBMIT = """
import htcondor2 as htcondor, json, os, pwd, time
me = pwd.getpwuid(os.getuid()).pw_name
schedd = htcondor.Schedd(htcondor.Collector().locate(htcondor.DaemonType.Schedd, me + "@officina"))
job = schedd.submit(htcondor.Submit({"executable": "/bin/sh", "arguments": "\\"-c 'id -un'\\"",
    "output": "who.out", "log": "who.log", "request_cpus": "1", "request_memory": "64", "request_disk": "1024"}))
for event in htcondor.JobEventLog("who.log").events(stop_after=120):
    if event.type == htcondor.JobEventType.JOB_TERMINATED:
        break
print("ran-as", open("who.out").read().strip())
print("cluster", job.cluster())
"""


@pytest.fixture(scope="module")
def platform(platform_roots):
    if os.geteuid() != 0:
        pytest.fail("the embedded HTCondor pool needs root (as CI runs)")
    made = subprocess.run(["bash", str(REPO / "scripts" / "condor-root.sh"), str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-2000:]
    (port,) = free_ports(1)
    p = start_platform(platform_roots("condor"), condor={"enabled": True, "root": str(ROOT), "port": port},
                       dask={"enabled": False}, resources={"enabled": False})
    yield p
    try:
        p.down()
    finally:
        p.emergency_stop()


def test_the_platform_runs_the_pool(platform):
    status = platform.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith("htcondor"))
    assert line.endswith("healthy"), status.stdout


def test_sessions_submit_with_their_minted_token_and_see_only_their_jobs(platform):
    people = {}
    for name in ("alice", "bob"):
        person = HubSession(platform, name)
        person.login()
        person.start_server()
        people[name] = person
    out = {}
    for name, person in people.items():
        cell = run_in_kernel(platform, name, person.token(), SUBMIT, timeout=240)
        assert cell["error"] is None, cell
        out[name] = cell["stdout"]
        assert f"ran-as officina-{name}" in cell["stdout"], cell["stdout"]
    # alice asks bob's schedd for his queue: refused (each schedd is its owner's only).
    cell = run_in_kernel(platform, "alice", people["alice"].token(), (
        "import htcondor2 as htcondor\n"
        "ad = htcondor.Collector().locate(htcondor.DaemonType.Schedd, 'officina-bob@officina')\n"
        "try:\n"
        "    print('saw', len(htcondor.Schedd(ad).query()))\n"
        "except Exception as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    ), timeout=120)
    assert cell["error"] is None, cell
    assert "refused" in cell["stdout"], cell["stdout"]
    # The token is a file of the user's, not in the environment or on a command line.
    cell = run_in_kernel(platform, "bob", people["bob"].token(), (
        "import os, stat\n"
        "d = os.environ['_CONDOR_SEC_TOKEN_DIRECTORY']\n"
        "f = os.path.join(d, os.listdir(d)[0])\n"
        "print('mode', oct(stat.S_IMODE(os.stat(f).st_mode)), 'owner', os.stat(f).st_uid == os.getuid())\n"
        "print('in-env', any('eyJ' in v for v in os.environ.values()))\n"
    ), timeout=60)
    assert "mode 0o600 owner True" in cell["stdout"] and "in-env False" in cell["stdout"], cell


def test_the_clusters_panel_shows_and_removes_your_jobs(platform):
    alice = HubSession(platform, "alice")
    alice.login()
    alice.start_server()
    cell = run_in_kernel(platform, "alice", alice.token(), """
import htcondor2 as htcondor, os, pwd
from officina.widgets import Clusters
me = pwd.getpwuid(os.getuid()).pw_name
schedd = htcondor.Schedd(htcondor.Collector().locate(htcondor.DaemonType.Schedd, me + "@officina"))
job = schedd.submit(htcondor.Submit({"executable": "/bin/sleep", "arguments": "300", "request_memory": "16",
                                     "request_disk": "1024"}))
panel = Clusters()
print("tabs", [panel.get_title(i) for i in range(3)])
print("spark-tab", panel.children[1].value)
jobs = panel.children[2]
print("listed", f"{job.cluster()}.0" in jobs.table.value)
jobs.job_id.value = f"{job.cluster()}.0"
jobs.remove_button.click()
print("note", jobs.note.value)
print("left", len(schedd.query(constraint=f"ClusterId == {job.cluster()} && JobStatus != 3")))
jobs.job_id.value = "x.y"
jobs.remove_button.click()
print("bad", jobs.note.value)
""", timeout=180)
    assert cell["error"] is None, cell
    out = cell["stdout"]
    assert "tabs ['Dask', 'Spark', 'HTCondor']" in out
    assert "this session has no resource manager" in out  # the platform runs none here: said
    assert "listed True" in out and "removed" in out and "left 0" in out
    assert "Job: give cluster or cluster.proc, got x.y" in out
