"""HTCondor through the platform: `officina up` runs the pool, a session start mints the
user's token, and users submit from their notebooks, each seeing only their own jobs."""

from __future__ import annotations

import json
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


# HTCondor workers through the resource manager: quota of 3 cores, 3 GiB for everyone.
RESOURCES = {
    "limits": [{"groups": [], "max_resources": 2, "max_cores": 3, "max_memory": "3G"}],
    "condor": {"options": {"workers": {"default": 1, "max": 4}, "worker_memory": {"default": 0.5, "max": 2}}},
}


@pytest.fixture(scope="module")
def platform(platform_roots):
    if os.geteuid() != 0:
        pytest.fail("the embedded HTCondor pool needs root (as CI runs)")
    made = subprocess.run(["bash", str(REPO / "scripts" / "condor-root.sh"), str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-2000:]
    (port,) = free_ports(1)
    p = start_platform(platform_roots("condor"), condor={"enabled": True, "root": str(ROOT), "port": port},
                       dask={"enabled": False}, resources=RESOURCES)
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
print("spark-tab", type(panel.children[1]).__name__)
jobs = panel.children[2].jobs
print("workers-panel", type(panel.children[2].workers).__name__)
print("listed", f"{job.cluster()}.0" in jobs.table.value)
jobs.job_id.value = f"{job.cluster()}.0"
jobs.remove_button.click()
print("note", jobs.note.value)
print("left", len(schedd.query(constraint=f"ClusterId == {job.cluster()} && JobStatus != 3")))
jobs.job_id.value = "x.y"
jobs.remove_button.click()
print("bad", jobs.note.value)
nodes = panel.children[2].workers
print("fields", list(nodes.fields))
nodes.fields["workers"].value = 1
nodes.create_button.click()
print("created", nodes.note.value)
rid = list(nodes.rows)[0]
print("row", nodes.rows[rid]["title"].value)
nodes.rows[rid]["workers"].value = 5
nodes.rows[rid]["scale"].click()
print("scale", nodes.note.value)
nodes.rows[rid]["stop"].click()
print("stopped", nodes.note.value, "| rows", len(nodes.rows))
""", timeout=240)
    assert cell["error"] is None, cell
    out = cell["stdout"]
    assert "tabs ['Dask', 'Spark', 'HTCondor']" in out
    assert "spark-tab SparkClusters" in out and "workers-panel CondorWorkers" in out  # the pool is offered: execute nodes above the jobs
    assert "listed True" in out and "removed" in out and "left 0" in out
    assert "Job: give cluster or cluster.proc, got x.y" in out
    # Execute nodes from the form the manager declares: create, refused scale, stop.
    assert "fields ['workers', 'worker_cores', 'worker_memory']" in out
    assert "created " in out and "with 1 nodes" in out
    assert "requirements = TARGET.OfficinaResource ==" in out
    assert "workers: at most 4, got 5 (HTTP 400)" in out
    assert "stopped " in out and "| rows 0" in out


def _pool_status(platform, constraint: str) -> list[list[str]]:
    """The collector's slot ads matching `constraint`, as the platform sees them."""
    from officina.hub.condor.pool import CondorPool

    pool = CondorPool(root=ROOT, state_dir=platform.state_dir / "condor", homes=platform.state_dir / "homes",
                      port=platform.config["condor"]["port"])
    # Raw (-af:r): START unevaluated (advertised by the worker startds).
    r = pool.run_in_root(["condor_status", "-constraint", constraint, "-af:r", "Name", "State", "Cpus", "Memory", "START"])
    assert r.returncode == 0, r.stderr
    return [[part.strip('"') for part in line.split(None, 4)] for line in r.stdout.splitlines() if line.strip()]


# A job for the nodes of resource RID, followed for WAIT seconds: its status and where it ran.
ON_NODES = """
import officina.lab as lab, json, time
res = lab.submit({"executable": "/bin/true", "log": "on-nodes.log", "request_cpus": "1", "request_memory": "64",
                  "request_disk": "1024"}, on="RID")
where = f"ClusterId == {res.cluster()}"
deadline, status, host = time.time() + WAIT, None, None
while time.time() < deadline:
    ads = lab.schedd().query(constraint=where, projection=["JobStatus", "RemoteHost", "LastRemoteHost"])
    ads = ads or list(lab.schedd().history(constraint=where, projection=["JobStatus", "LastRemoteHost"]))
    if ads:
        status, host = ads[0]["JobStatus"], ads[0].get("RemoteHost") or ads[0].get("LastRemoteHost")
    if status == 4:
        break
    time.sleep(1)
print("job", json.dumps({"status": status, "host": host, "cluster": res.cluster()}))
"""


def test_condor_workers_are_the_owners_only_and_within_quota(platform):
    people = {name: HubSession(platform, name) for name in ("alice", "bob")}
    for person in people.values():
        person.login()
        person.start_server()
    cell = run_in_kernel(platform, "alice", people["alice"].token(), """
import officina.lab as lab, json
nodes = lab.condor_workers(workers=2, worker_cores=1, worker_memory=1)
print("record", json.dumps(nodes))
""", timeout=240)
    assert cell["error"] is None, cell
    record = json.loads(cell["stdout"].split("record ", 1)[1].splitlines()[0])
    rid = record["id"]
    assert record["phase"] == "running" and record["workers"] == 2
    slots = _pool_status(platform, f'OfficinaResource == "{rid}"')
    assert sorted(s[0] for s in slots) == [f"slot1@{rid}-1@officina", f"slot1@{rid}-2@officina"], slots
    assert all(s[2] == "1" and s[3] == "1024" and 'Owner == "officina-alice"' in s[4] for s in slots), slots

    # alice's job on her nodes runs there; bob's job asking for them is never matched.
    cell = run_in_kernel(platform, "alice", people["alice"].token(), ON_NODES.replace("RID", rid).replace("WAIT", "120"), timeout=180)
    assert cell["error"] is None, cell
    alice_job = json.loads(cell["stdout"].split("job ", 1)[1].splitlines()[0])
    assert alice_job["status"] == 4 and f"@{rid}-" in alice_job["host"], alice_job
    cell = run_in_kernel(platform, "bob", people["bob"].token(), ON_NODES.replace("RID", rid).replace("WAIT", "15"), timeout=90)
    assert cell["error"] is None, cell
    bob_job = json.loads(cell["stdout"].split("job ", 1)[1].splitlines()[0])
    assert bob_job["status"] == 1 and bob_job["host"] is None, bob_job  # still idle: START refuses him

    # bob cannot list, scale or stop alice's nodes; alice's quota refuses a third core.
    cell = run_in_kernel(platform, "bob", people["bob"].token(), f"""
from officina.lab.resources import Resources, ResourceError
for call in (lambda: Resources().get("{rid}"), lambda: Resources().scale("{rid}", 3), lambda: Resources().delete("{rid}")):
    try:
        call(); print("allowed")
    except ResourceError as exc:
        print("refused", exc)
print("listed", [r["id"] for r in Resources().list("condor")])
""", timeout=60)
    assert cell["stdout"].count("refused you have no resource") == 3 and "listed []" in cell["stdout"], cell
    cell = run_in_kernel(platform, "alice", people["alice"].token(), f"""
import officina.lab as lab
from officina.lab.resources import Resources, ResourceError
try:
    Resources().scale("{rid}", 4)
except ResourceError as exc:
    print("refused", exc)
try:
    lab.condor_workers(workers=1, worker_cores=1, worker_memory=2)
except ResourceError as exc:
    print("refused", exc)
try:
    lab.condor_workers(workers=1, worker_cores=1, gpus=1)
except ResourceError as exc:
    print("refused", exc)
print("scaled", Resources().scale("{rid}", 1)["workers"])
""", timeout=120)
    out = cell["stdout"]
    assert cell["error"] is None, cell
    assert f"refused 4 cores for {rid} would exceed the quota for everyone: 3 cores across your resources, 0 in use by your others" in out, out
    assert "refused 2 GiB more would exceed the quota for everyone: 3 GiB across your resources, 2 GiB in use" in out, out
    assert "refused unknown option gpus for condor" in out and "(HTTP 400)" in out, out
    assert "scaled 1" in out
    assert [s[0] for s in _pool_status(platform, f'OfficinaResource == "{rid}"')] == [f"slot1@{rid}-1@officina"]

    # Dask on HTCondor, on her own node: the workers are her jobs and ran there.
    cell = run_in_kernel(platform, "alice", people["alice"].token(), f"""
import officina.lab as lab, dask.array as da, os
client = lab.condor_dask(workers=1, on="{rid}", memory="512 MiB")
print("total", int(da.arange(1_000_000, chunks=100_000).sum().compute()))
print("uid", list(client.run(os.getuid).values()) == [os.getuid()])
print("on-node", list(client.run(lambda: os.environ.get("_CONDOR_SLOT_NAME", "") or open(os.environ["_CONDOR_MACHINE_AD"]).read()).values())[0].count("{rid}") > 0)
client.cluster.close(); client.close()
""", timeout=300)
    assert cell["error"] is None, cell
    assert "total 499999500000" in cell["stdout"] and "uid True" in cell["stdout"] and "on-node True" in cell["stdout"], cell

    cell = run_in_kernel(platform, "alice", people["alice"].token(), f"""
import officina.lab as lab
print("stopped", lab.stop_condor_workers("{rid}")["phase"])
""", timeout=120)
    assert "stopped stopped" in cell["stdout"], cell
    assert _pool_status(platform, f'OfficinaResource == "{rid}"') == []
