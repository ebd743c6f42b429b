"""The Spark backend for real: a standalone Master and Workers as a per-user account, a job
through `officina.lab.spark.spark_session` from a driver running as that account, scaling,
failure reports, stop after a manager restart, and nothing listening beyond loopback.

The tests of this module share one cluster and run in order (start, use, scale, break, stop).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from officina.hub.accounts import ensure_account, make_session_preexec, system_account_name
from officina.hub.resources.contract import BackendError, Owner, Resource
from officina.hub.resources.spark_local import LocalSparkBackend

pytestmark = pytest.mark.timeout(600)

USER = "sparktest"
UI_PREFIX = "/services/resources/spark/{id}/ui"
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}
OPTIONS = {"worker_cores": 1, "worker_memory": 1.0}

# Runs as the owner's account, as a notebook would; waits on stdin while the test looks on.
DRIVER = """
import json, os, sys
from officina.lab.spark import spark_session
spark = spark_session(sys.argv[1], "officina-test", secret=sys.argv[2], ui=sys.argv[3], **json.loads(sys.argv[4]))
total = spark.range(10**6).selectExpr("sum(id) AS s").collect()[0]["s"]
uids = sorted(set(spark.sparkContext.parallelize(range(8), 4).map(lambda _: os.getuid()).collect()))
print("RESULT " + json.dumps({"sum": total, "python_worker_uids": uids}), flush=True)
sys.stdin.read()
spark.stop()
"""


def master_json(resource: Resource) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(resource.endpoints["ui"] + "json/", timeout=5) as response:
        return json.load(response)


def get(url: str, headers: dict | None = None) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
        return response.read().decode()


def alive_workers(resource: Resource) -> int:
    return sum(1 for w in master_json(resource)["workers"] if w["state"] == "ALIVE")


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def leftovers(uid: int, workdir: str) -> list[psutil.Process]:
    """Live processes of the owner's account (root mode: it is this module's own account),
    or, as the platform's account, those that name the resource's folder."""
    found = []
    for p in psutil.process_iter(["uids", "status", "cmdline"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE or not p.info["uids"]:
            continue
        if (p.info["uids"].real == uid and uid != os.getuid()) or workdir in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def non_loopback_listeners(pids: set[int]) -> list:
    return [c for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids and c.laddr.ip not in LOOPBACK_ADDRESSES]


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # exited meanwhile, or a zombie
        return ""


def daemon_pids(resource: Resource) -> list[int]:
    return [resource.state["master"]["pid"], *(w["pid"] for w in resource.state["workers"])]


def tree(pid: int) -> set[int]:
    proc = psutil.Process(pid)
    return {pid, *(child.pid for child in proc.children(recursive=True))}


def start_driver(resource: Resource, owner: Owner, **conf) -> subprocess.Popen:
    """The notebook's side: a process as the owner, started the way a session is."""
    account = pwd.getpwnam(owner.account) if owner.account else None
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, resource.endpoints["master"], resource.state["secret"],
         resource.endpoints["ui"], json.dumps(conf)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PATH": os.environ["PATH"], "HOME": owner.home, "LANG": "C.UTF-8"},
        preexec_fn=make_session_preexec(Path(owner.home), account),
    )


@pytest.fixture(scope="module")
def roots(platform_roots):
    if shutil.which("java") is None:
        pytest.fail("java is missing: Spark needs Java 17 (Debian package openjdk-17-jre-headless)")
    return platform_roots("spark")


@pytest.fixture(scope="module")
def owner(roots):
    """The test user's system account, made as the platform makes it (root); otherwise the
    platform's own account. Removed at the end only if this module made it."""
    homes = roots / "homes"
    homes.mkdir(mode=0o711)
    home = homes / USER
    made = False
    if os.geteuid() == 0:
        name = system_account_name(USER)
        try:
            pwd.getpwnam(name)
        except KeyError:
            made = True
        account = ensure_account(USER, home).pw_name
    else:
        account = None
        home.mkdir(mode=0o700)
    yield Owner(name=USER, groups=("users",), account=account, home=str(home),
                token_file=str(home / ".officina" / "bearer_token"))
    if made:
        subprocess.run(["userdel", account], capture_output=True)


@pytest.fixture(scope="module")
def uid(owner) -> int:
    return pwd.getpwnam(owner.account).pw_uid if owner.account else os.getuid()


@pytest.fixture(scope="module")
def backend(roots) -> LocalSparkBackend:
    return LocalSparkBackend(roots / "work", ui_prefix=UI_PREFIX)


@pytest.fixture(scope="module")
def cluster(backend, owner):
    resource = Resource(id="sp1", kind="spark", owner=USER, options=dict(OPTIONS), workers=2)
    started = time.monotonic()
    backend.start(resource, owner)
    print(f"started master and 2 workers in {time.monotonic() - started:.1f} s")
    yield resource
    backend.stop(resource)


def test_start_runs_as_the_owner_and_computes(backend, cluster, owner, uid):
    resource = cluster
    json.dumps(resource.to_json())  # what the manager persists
    assert resource.endpoints["master"] == f"spark://127.0.0.1:{resource.state['master']['port']}"
    assert resource.endpoints["ui"] == f"http://127.0.0.1:{resource.state['master']['ui_port']}/"
    assert alive_workers(resource) == 2
    assert backend.alive(resource) == (True, 2, "master and 2 of 2 workers running")
    assert backend.busy(resource) is False

    workdir = Path(resource.state["workdir"])
    assert workdir.stat().st_uid == uid and workdir.stat().st_mode & 0o777 == 0o700
    assert (workdir / "logs" / "master.log").stat().st_uid == uid
    for pid in daemon_pids(resource):
        proc = psutil.Process(pid)
        assert proc.uids().real == uid and proc.uids().effective == uid
        assert os.getpgid(pid) == pid  # its own process group, which stop() ends
        assert "NoNewPrivs:\t1" in Path(f"/proc/{pid}/status").read_text()
        assert proc.environ()["HOME"] == owner.home
        assert proc.environ()["BEARER_TOKEN_FILE"] == owner.token_file
    # The secret is in the owner's 0600 file, never on a command line.
    for pid in daemon_pids(resource):
        assert resource.state["secret"] not in " ".join(psutil.Process(pid).cmdline())

    driver = start_driver(resource, owner)
    output = []
    try:
        started = time.monotonic()
        for line in driver.stdout:
            output.append(line)
            if line.startswith("RESULT "):
                break
        assert output and output[-1].startswith("RESULT "), "".join(output[-40:])
        print(f"session and job in {time.monotonic() - started:.1f} s")
        result = json.loads(output[-1][len("RESULT "):])
        assert result["sum"] == sum(range(10**6))
        assert result["python_worker_uids"] == [uid]
        assert "Workers: 2 of 2\n" in output  # the plain-text progress line

        # The application holds one executor per worker, as the owner, and the cluster is busy.
        assert backend.busy(resource) is True
        executors = [p for pid in daemon_pids(resource)[1:] for p in psutil.Process(pid).children(recursive=True)
                     if "CoarseGrainedExecutorBackend" in cmdline(p)]
        assert len(executors) == 2 and {p.uids().real for p in executors} == {uid}

        # Nothing of the cluster, its executors or the driver listens beyond loopback.
        pids = set().union(*(tree(pid) for pid in daemon_pids(resource)), tree(driver.pid))
        assert non_loopback_listeners(pids) == []
        listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert len(listening) >= 2 + 2 * 2 + 2  # master, UIs, workers, executors, driver
        assert subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).returncode == 0
        for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
            if any(f"pid={pid}," in line for pid in pids):
                assert line.split()[3].rsplit(":", 1)[0] in {"127.0.0.1", "[::ffff:127.0.0.1]"}, line
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
    wait_for("the application to end", lambda: not backend.busy(resource))


def test_an_application_that_cannot_fit_is_told_why(backend, cluster, owner):
    driver = start_driver(cluster, owner, executor_memory="64g", timeout=3)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 1
    assert ("TimeoutError: no Spark executor arrived within 3 s: this application asks for 64g per executor; "
            "1 free cores and 1024 MiB free on worker 127.0.0.1:") in output, output[-3000:]
    wait_for("the application to end", lambda: not backend.busy(cluster))


def test_ui_is_served_for_its_prefix(cluster):
    """Spark's reverse proxy mode: links carry the prefix, workers' UIs come through the master."""
    prefix = UI_PREFIX.format(id=cluster.id)
    page = get(cluster.endpoints["ui"])
    assert f'href="{prefix}/static/webui.css"' in page
    worker = master_json(cluster)["workers"][0]["id"]
    assert f'href="{prefix}/proxy/{worker}"' in page
    assert "Spark Worker" in get(f"{cluster.endpoints['ui']}proxy/{worker}/")
    assert cluster.state["secret"] not in get(f"{cluster.endpoints['ui']}environment/")


def test_others_without_the_secret_are_refused(cluster, roots):
    """Any local account reaches loopback: a worker (or an application) without the cluster's
    secret cannot join it."""
    from officina.hub.resources.spark_local import free_port, spark_home

    folder = roots / "rogue"
    (folder / "conf").mkdir(parents=True)
    port = free_port()
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": str(spark_home()), "SPARK_CONF_DIR": str(folder / "conf"),
           "SPARK_LOCAL_IP": "127.0.0.1", "HOME": str(folder)}
    with open(folder / "worker.log", "w") as log:
        rogue = subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
             cluster.endpoints["master"], "--host", "127.0.0.1", "--port", str(port), "--cores", "1",
             "--memory", "512m", "--work-dir", str(folder / "work")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for("the rogue worker's refusal",
                 lambda: "SaslMessage" in (folder / "worker.log").read_text(errors="replace"), timeout=60)
        assert port not in {w["port"] for w in master_json(cluster)["workers"]}
    finally:
        os.killpg(rogue.pid, signal.SIGKILL)
        rogue.wait()


def test_scale_down_and_up(backend, cluster, owner):
    first = cluster.state["workers"][0]["pid"]
    newest = cluster.state["workers"][1]["pid"]
    started = time.monotonic()
    backend.scale(cluster, owner, 1)
    print(f"scaled to 1 in {time.monotonic() - started:.1f} s")
    assert alive_workers(cluster) == 1
    assert not psutil.pid_exists(newest) or psutil.Process(newest).status() == psutil.STATUS_ZOMBIE
    assert [w["pid"] for w in cluster.state["workers"]] == [first]

    started = time.monotonic()
    backend.scale(cluster, owner, 3)
    print(f"scaled to 3 in {time.monotonic() - started:.1f} s")
    assert alive_workers(cluster) == 3
    assert len(cluster.state["workers"]) == 3 and cluster.state["workers"][0]["pid"] == first
    assert backend.alive(cluster) == (True, 3, "master and 3 of 3 workers running")


def test_alive_reports_a_dead_worker(backend, cluster):
    victim = cluster.state["workers"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    running, workers, message = wait_for("the master to notice", lambda: (r := backend.alive(cluster))[1] == 2 and r)
    assert running is False and workers == 2
    assert f"Spark worker {victim['name']} (pid {victim['pid']}) has exited" in message


def test_stop_after_a_manager_restart(backend, cluster, uid, roots):
    """A fresh backend given only the persisted record stops everything; stop is idempotent."""
    record = json.loads(json.dumps(cluster.to_json()))
    ports = [cluster.state["master"]["port"], cluster.state["master"]["ui_port"]]
    workdir = record["state"]["workdir"]
    assert leftovers(uid, workdir)
    fresh = LocalSparkBackend(roots / "work", ui_prefix=UI_PREFIX)
    resource = Resource.from_json(record)
    started = time.monotonic()
    fresh.stop(resource)
    print(f"stopped in {time.monotonic() - started:.1f} s")
    assert leftovers(uid, workdir) == []
    assert not Path(workdir).exists()
    listening = {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert not set(ports) & listening
    assert fresh.alive(resource)[0] is False
    fresh.stop(resource)
    backend.stop(cluster)  # the original instance, after the fact: nothing to do, no error
    assert fresh.alive(Resource.from_json(record))[0] is False
    assert fresh.busy(Resource.from_json(record)) is False


def test_a_java_that_fails_is_reported(roots, owner, uid):
    broken = roots / "no-java"
    broken.mkdir()
    backend = LocalSparkBackend(roots / "work", java_home=str(broken), timeout=60)
    resource = Resource(id="bad1", kind="spark", owner=USER, options=dict(OPTIONS), workers=1)
    with pytest.raises(BackendError) as failure:
        backend.start(resource, owner)
    message = str(failure.value)
    print(message)
    assert message.startswith("the Spark master exited while waiting for the master to start; the end of its log:\n")
    assert f"{broken}/bin/java: No such file or directory" in message
    assert "Traceback" not in message
    assert leftovers(uid, str(roots / "work" / "bad1")) == []
    assert not (roots / "work" / "bad1").exists()
    backend.stop(resource)  # after a failed start too


def test_a_start_that_takes_too_long_is_reported(roots, owner, uid):
    backend = LocalSparkBackend(roots / "work", timeout=0.5)
    resource = Resource(id="bad4", kind="spark", owner=USER, options=dict(OPTIONS), workers=1)
    with pytest.raises(BackendError, match=r"^timed out after 0.5 s waiting for the master to start; the end of the logs:\n-- master:"):
        backend.start(resource, owner)
    assert leftovers(uid, str(roots / "work" / "bad4")) == []
    assert not (roots / "work" / "bad4").exists()


def test_a_work_root_the_owner_cannot_reach_is_reported(roots, owner):
    if owner.account is None:
        pytest.skip("only per-user accounts can be shut out of a folder")
    closed = roots / "closed"
    closed.mkdir(mode=0o700)
    backend = LocalSparkBackend(closed / "work")
    resource = Resource(id="bad2", kind="spark", owner=USER, options=dict(OPTIONS), workers=1)
    with pytest.raises(BackendError, match=re.escape(f"cannot be reached by {owner.account}: {closed} is not traversable")):
        backend.start(resource, owner)


@pytest.mark.parametrize("options, error", [
    ({"worker_cores": 1}, r"missing \['worker_memory'\]"),
    ({"worker_cores": 1, "worker_memory": 1.0, "gpus": 1}, r"unknown \['gpus'\]"),
    ({"worker_cores": 0, "worker_memory": 1.0}, "worker_cores must be a whole number of at least 1"),
    ({"worker_cores": 1, "worker_memory": -1}, "worker_memory must be a positive number of GiB"),
])
def test_options_fail_closed(roots, owner, options, error):
    resource = Resource(id="bad3", kind="spark", owner=USER, options=options, workers=1)
    with pytest.raises(BackendError, match=error):
        LocalSparkBackend(roots / "work").start(resource, owner)
    assert resource.state == {}
