"""Clusters on request: Spark through Officina's resource manager, and Dask on HTCondor through
officina.lab, each against the same thing done by hand, side by side in one run.

## Spark

Measured: request to first result for a Spark standalone cluster of 2 workers (1 core, 1 GiB
each), that is, from asking for the cluster, through its master and both workers running, a
SparkSession with one executor on each worker, to the result of `spark.range(1000).count()`.
Also reported: the part until the cluster is ready (before the SparkSession).

Officina: the embedded platform (`officina up`, started as the tests start it, Dask off) with
its resource manager. One person logs in through the IAM stand-in and starts a session once
(that creates their system account; the session is stopped again so that it does not share the
cores with the measurement). Every round then does from this process what `officina.spark()`
does in a kernel, with the same client code (officina.lab.resources) and the person's hub
token: POST the resource, poll it until it is running (the client's 0.5 s polling, which a
notebook pays too), and `session_on(record)`: the driver runs in this process and reads the
cluster's secret from its configuration file, which the owner's account can read, and root too
(this benchmark runs as root, as the platform does). Master, workers and executors run as the
person's account, as for a user.
By hand: the same daemons (`spark-class` Master and 2 Workers, as hub/resources/spark_local.py
starts them: the same spark-defaults.conf with its properties and a fresh secret, the same
daemon heap, environment and worker size, on free loopback ports), started directly by this
process as its own account; the master is polled every 0.1 s until ALIVE, then both workers
are started and polled until registered, then the same `spark_session(...)` as Officina's
driver (same properties, waits for the same two executors) and the same job.

The two alternate round by round (the order flipped every round), each after one untimed
warm-up (the driver's JVM in this process starts on the first session; page cache); the
platform stays up, idle, during the rounds by hand. Clusters are stopped after each round
(not timed): Officina's by DELETE, those by hand by their PIDs (each daemon's process group,
TERM then KILL), and everything this benchmark started is gone when it ends.

Target: Officina's overhead on the first result under 10 % (median ratio Officina / by hand
below 1.10): the resource manager adds an HTTP round trip through the hub's proxy and the
token check, a thread, the account switch and its status polling, against JVM start-ups that
take seconds.

## Dask on HTCondor
Measured: request to first result for 2 Dask workers as HTCondor jobs (1 core, 512 MiB each) on
the platform's pool: from the call, through a scheduler in the calling process, 2 worker jobs
submitted to the person's own schedd, matched, started and connected, to the result of a
`dask.array` sum of 10 chunks. Every round runs in a fresh Python process as the person's
account with the environment a session has (the pool's client configuration, the token the
platform minted at the session start, the platform's Python for the workers); the clock starts
after the imports. The jobs run on the pool's shared slot (2 cores).
Officina: `officina.lab.condor_dask(workers=2, memory="512 MiB")` (dask-jobqueue's
HTCondorCluster as the platform configures it: its job script, the person's log folder, the
progress updates). By hand: a `LocalCluster` with no workers as the scheduler, and one
submission of 2 jobs written by hand with the htcondor2 bindings to the same schedd, running
`python -m distributed.cli.dask_worker <scheduler> --nthreads 1 --memory-limit 512MiB`. Also
reported, with no counterpart by hand: Officina with execute nodes of the person's own first
(`condor_workers(workers=2)` through the resource manager, then `condor_dask(on=nodes)`), the
whole request included.
Target as for Spark: median ratio Officina / by hand below 1.10.

    .venv/bin/python benchmarks/clusters.py [--repeat 3] [--only spark|condor]

Prints a Markdown table per part (median and p95 per system) and the ratios Officina / by hand.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder leads sys.path, where benchmarks/dask.py would shadow the
# dask package for everything officina.lab imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "tests"))

from officina.hub.resources.spark_local import (  # noqa: E402
    DAEMON_PROPERTIES, LOOPBACK, MASTER_CLASS, SUBFOLDERS, WORKER_CLASS, LocalSparkBackend, free_port, spark_home,
)
from officina.lab.resources import Resources, session_on  # noqa: E402
from officina.lab.spark import spark_session  # noqa: E402

CONDOR_ROOT = Path(os.environ.get("OFFICINA_CONDOR_ROOT", "/var/cache/officina/condor-root"))

USER, PASSWORD = "sparkbench", secrets.token_urlsafe(12)
WORKERS, WORKER_CORES, WORKER_MEMORY_GIB = 2, 1, 1
# The platform's backend runs with its default daemon heap: the same here.
DAEMON_MEMORY = inspect.signature(LocalSparkBackend).parameters["daemon_memory"].default
JOB_ROWS = 1000
# For both drivers alike: no console progress bars between the rounds' output.
DRIVER_CONF = {"spark.ui.showConsoleProgress": "false"}


def write_users(path: Path) -> None:
    import yaml

    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        yaml.safe_dump({"users": [
            {"username": USER, "sub": "30000000-0000-4000-8000-000000000001", "password": PASSWORD,
             "name": "Spark Bench", "email": f"{USER}@example.org", "groups": ["officina/users"]}]}, handle)


def first_job(spark) -> None:
    assert spark.range(JOB_ROWS).count() == JOB_ROWS


def master_status(ui: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(ui.rstrip("/") + "/json/", timeout=3) as response:
        return json.load(response)


class OfficinaSpark:
    """Clusters asked of the platform's resource manager with the person's token."""

    name = "Officina"

    def __init__(self, manager: Resources):
        self.manager = manager

    def round(self) -> dict[str, float]:
        t0 = time.perf_counter()
        record = self.manager.create("spark", workers=WORKERS, worker_cores=WORKER_CORES,
                                     worker_memory=WORKER_MEMORY_GIB)
        spark = None
        try:
            record = self.manager.wait_running(record["id"], timeout=300)
            ready = time.perf_counter() - t0
            spark = session_on(record, **DRIVER_CONF)
            first_job(spark)
            first = time.perf_counter() - t0
        finally:
            if spark is not None:
                spark.stop()
            stopped = self.manager.delete(record["id"])
            assert stopped["phase"] == "stopped", stopped
        return {"ready": ready, "first": first}


class SparkByHand:
    """Master and workers started directly with spark-class, as spark_local.py does."""

    name = "by hand"

    def __init__(self, root: Path):
        self.root = root
        self.count = 0
        self.children: list[subprocess.Popen] = []

    def _spawn(self, folder: Path, env: dict, name: str, arguments: list[str]) -> None:
        with open(folder / "logs" / f"{name}.log", "ab") as log:
            child = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *arguments], env=env, cwd=folder,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.children.append(child)

    def _wait(self, what: str, ready, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for child in self.children:
                if child.poll() is not None:
                    raise RuntimeError(f"a Spark daemon (pid {child.pid}) exited while waiting for {what}")
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass  # not answering yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def round(self) -> dict[str, float]:
        self.count += 1
        folder = self.root / f"cluster-{self.count}"
        folder.mkdir(mode=0o700)
        for sub in SUBFOLDERS:
            (folder / sub).mkdir(mode=0o700)
        secret = secrets.token_hex(32)
        properties = dict(DAEMON_PROPERTIES, **{"spark.authenticate.secret": secret})
        conf = folder / "conf" / "spark-defaults.conf"
        with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.writelines(f"{key} {value}\n" for key, value in properties.items())
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(folder),
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(folder / "conf"),
            "SPARK_LOCAL_IP": LOOPBACK,
            "SPARK_LOCAL_DIRS": str(folder / "local"),
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "PYSPARK_PYTHON": sys.executable,
        }
        master_port, ui_port = free_port(), free_port()
        master, ui = f"spark://{LOOPBACK}:{master_port}", f"http://{LOOPBACK}:{ui_port}/"

        t0 = time.perf_counter()
        spark = None
        try:
            self._spawn(folder, env, "master", [MASTER_CLASS, "--host", LOOPBACK, "--port", str(master_port),
                                                "--webui-port", str(ui_port)])
            self._wait("the master", lambda: master_status(ui).get("status") == "ALIVE")
            for index in range(WORKERS):
                self._spawn(folder, env, f"worker-{index}", [
                    WORKER_CLASS, master, "--host", LOOPBACK, "--port", str(free_port()),
                    "--webui-port", str(free_port()), "--cores", str(WORKER_CORES),
                    "--memory", f"{WORKER_MEMORY_GIB * 1024}m", "--work-dir", str(folder / "workers" / str(index)),
                ])
            self._wait("the workers", lambda: sum(w.get("state") == "ALIVE" for w in master_status(ui)["workers"]) >= WORKERS)
            ready = time.perf_counter() - t0
            spark = spark_session(master, app_name=f"by-hand-{self.count}", secret=secret, ui=ui, **DRIVER_CONF)
            first_job(spark)
            first = time.perf_counter() - t0
        finally:
            if spark is not None:
                spark.stop()
            self.stop()
        return {"ready": ready, "first": first}

    def stop(self) -> None:
        """TERM to each daemon's process group (the daemon and the executors it started), newest
        first, KILL to what is left; by the PIDs this benchmark started."""
        children, self.children = list(reversed(self.children)), []
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            alive = [c for c in children if _group_alive(c.pid)]
            for child in alive:
                try:
                    os.killpg(child.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while alive and time.monotonic() < deadline:
                for child in alive:
                    child.poll()  # reap the daemon itself: a zombie still counts in its group
                alive = [c for c in alive if _group_alive(c.pid)]
                time.sleep(0.1)
        for child in children:
            child.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ------------------------------------------------------------------ Dask on HTCondor

# Each round: a fresh interpreter as the person; the JSON line at the end carries the timings.
CONDOR_ROUND_PRELUDE = """
import json, os, sys, time
import dask.array as da
import officina.lab as lab
from distributed import Client, LocalCluster
import htcondor2 as htcondor
def first_result(client):
    assert int(da.arange(1_000_000, chunks=100_000).sum().compute()) == 499999500000
def submit_workers(scheduler, count):
    os.makedirs("by-hand-logs", exist_ok=True)
    return lab.schedd().submit(htcondor.Submit({
        "executable": os.environ["OFFICINA_CONDOR_PYTHON"],
        "arguments": f"-m distributed.cli.dask_worker {scheduler} --nthreads 1 --memory-limit 512MiB "
                     "--name by-hand-$(ClusterId)-$(ProcId) --death-timeout 60",
        "output": "by-hand-logs/$(ClusterId).$(ProcId).out", "error": "by-hand-logs/$(ClusterId).$(ProcId).err",
        "request_cpus": "1", "request_memory": "512", "request_disk": "102400",
    }), count=count)
def remove(jobs):
    for job in jobs:
        lab.schedd().act(htcondor.JobAction.Remove, f"ClusterId == {job.cluster()}")
def drain(timeout=60):
    # Not timed: the next round starts with the worker jobs out of the queue and no slot of
    # the pool claimed any more (a claim outlives its job by a few seconds).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = lab.schedd().query(projection=["ClusterId"]) or htcondor.Collector().query(
            htcondor.AdType.Startd, constraint='State != "Unclaimed"', projection=["Name"])
        if not busy:
            return
        time.sleep(0.5)
"""
BY_HAND = """
t0 = time.perf_counter()
cluster = LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None)
client = Client(cluster)
jobs = SUBMISSIONS
client.wait_for_workers(2, timeout=300)
ready = time.perf_counter() - t0
first_result(client)
first = time.perf_counter() - t0
client.close(); cluster.close()
remove(jobs)
drain()
print(json.dumps({"ready": ready, "first": first}))
"""
CONDOR_ROUNDS = {
    "Officina": """
t0 = time.perf_counter()
client = lab.condor_dask(workers=2, memory="512 MiB")
ready = time.perf_counter() - t0
first_result(client)
first = time.perf_counter() - t0
client.cluster.close(); client.close()
drain()
print(json.dumps({"ready": ready, "first": first}))
""",
    "Officina, own nodes": """
t0 = time.perf_counter()
nodes = lab.condor_workers(workers=2)
client = lab.condor_dask(workers=2, on=nodes, memory="512 MiB")
ready = time.perf_counter() - t0
first_result(client)
first = time.perf_counter() - t0
client.cluster.close(); client.close()
lab.stop_condor_workers(nodes["id"])
drain()
print(json.dumps({"ready": ready, "first": first}))
""",
    # The same jobs as dask-jobqueue's: one submission per worker, each of one job.
    "by hand": BY_HAND.replace("SUBMISSIONS", "[submit_workers(cluster.scheduler_address, 1) for _ in range(2)]"),
    # Both workers in one submission (one cluster of 2 jobs), as a person would write it.
    "by hand, one submission": BY_HAND.replace("SUBMISSIONS", "[submit_workers(cluster.scheduler_address, 2)]"),
}


class CondorDask:
    """One way of getting Dask workers on HTCondor, run as the person in a fresh process."""

    def __init__(self, name: str, env: dict, home: Path, account):
        self.name, self.env, self.home, self.account = name, env, home, account

    def round(self) -> dict[str, float]:
        from officina.hub.accounts import make_session_preexec

        result = subprocess.run(
            [sys.executable, "-c", CONDOR_ROUND_PRELUDE + CONDOR_ROUNDS[self.name]], env=self.env, cwd=self.home,
            preexec_fn=make_session_preexec(self.home, self.account), capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{self.name} round failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def condor_systems(platform, token: str) -> list[CondorDask]:
    import pwd

    from officina.hub.accounts import system_account_name
    from officina.hub.condor.pool import CondorPool

    account = pwd.getpwnam(system_account_name(USER))
    home = platform.state_dir / "homes" / USER
    pool = CondorPool(root=CONDOR_ROOT, state_dir=platform.state_dir / "condor", homes=platform.state_dir / "homes",
                      port=platform.config["condor"]["port"])
    env = {
        "HOME": str(home), "LANG": "C.UTF-8", **pool.client_env(home),
        "OFFICINA_RESOURCES_URL": f"{platform.url}services/resources/", "JUPYTERHUB_API_TOKEN": token,
    }
    return [CondorDask(name, env, home, account) for name in CONDOR_ROUNDS]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def start_officina(root: Path, condor: bool):
    """The platform, the person's account (a session started once, then stopped: it also
    minted their HTCondor token) and hub token."""
    from platform_harness import HubSession, Platform

    users_file = root / "users.yaml"
    write_users(users_file)
    (root / "officina").mkdir(mode=0o711)
    overrides = {"iam": {"standin": {"users_file": str(users_file)}}, "sessions": {"idle_timeout": 0},
                 "dask": {"enabled": False}}
    if condor:
        made = subprocess.run(["bash", str(ROOT / "scripts" / "condor-root.sh"), str(CONDOR_ROOT)],
                              capture_output=True, text=True, timeout=900)
        if made.returncode != 0:
            raise SystemExit(f"cannot prepare the HTCondor root: {made.stderr[-2000:]}")
        overrides["condor"] = {"enabled": True, "root": str(CONDOR_ROOT)}
    platform = Platform(root=root / "officina", overrides=overrides)
    platform.up()
    person = HubSession(platform, USER, PASSWORD)
    person.login()
    person.start_server()
    token = person.token()
    person.hub_api("DELETE", f"users/{USER}/server")
    deadline = time.monotonic() + 60
    while person.hub_api("GET", f"users/{USER}").json().get("servers") and time.monotonic() < deadline:
        time.sleep(0.5)
    return platform, token


def print_table(title: str, results: dict[str, list[dict[str, float]]], baseline: str = "by hand") -> None:
    columns = [("ready", "ready, s"), ("first", "first result, s")]
    print(f"\n{title}\n")
    header = "| system | " + " | ".join(f"{label} median | {label} p95" for _, label in columns) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, rounds in results.items():
        cells = []
        for key, _ in columns:
            values = [r[key] for r in rounds]
            cells += [f"{statistics.median(values):.2f}", f"{p95(values):.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for key, _ in columns:
        o, b = [r[key] for r in results["Officina"]], [r[key] for r in results[baseline]]
        cells += [f"{statistics.median(o) / statistics.median(b):.2f}", f"{p95(o) / p95(b):.2f}"]
    print(f"| ratio Officina / {baseline} | " + " | ".join(cells) + " |")
    ratio = statistics.median(r["first"] for r in results["Officina"]) / statistics.median(
        r["first"] for r in results[baseline])
    print(f"\nTarget: first result within 10 % of {baseline}: {'met' if ratio < 1.10 else 'missed'} "
          f"({(ratio - 1) * 100:+.0f} %)")


def alternate(systems: list, repeat: int) -> dict[str, list[dict[str, float]]]:
    """One untimed warm-up each, then `repeat` rounds each, the order rotated every round."""
    results = {system.name: [] for system in systems}
    for system in systems:
        system.round()
    for i in range(repeat):
        for system in systems[i % len(systems):] + systems[:i % len(systems)]:
            results[system.name].append(system.round())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per system")
    parser.add_argument("--only", choices=("spark", "condor"), help="one part only")
    args = parser.parse_args()
    if args.only != "spark" and os.geteuid() != 0:
        raise SystemExit("the HTCondor part needs root (the embedded pool mounts and chroots): --only spark")

    from platform_harness import officina_accounts

    from officina.hub.accounts import system_account_name

    account = system_account_name(USER)
    account_existed = os.geteuid() == 0 and account in officina_accounts()
    spark_results = condor_results = None
    # Not under /tmp/pytest-* (0700): the person's account must reach its home in the state.
    tmp = Path(tempfile.mkdtemp(prefix="officina-bench-"))
    platform = None
    by_hand = None
    try:
        tmp.chmod(0o711)
        (tmp / "officina").mkdir(mode=0o711)
        (tmp / "by-hand").mkdir(mode=0o700)
        platform, token = start_officina(tmp / "officina", condor=args.only != "spark")
        if args.only != "condor":
            manager = Resources(url=f"{platform.url}services/resources/", token=token)
            by_hand = SparkByHand(tmp / "by-hand")
            spark_results = alternate([OfficinaSpark(manager), by_hand], args.repeat)
        if args.only != "spark":
            condor_results = alternate(condor_systems(platform, token), args.repeat)
    finally:
        try:
            if by_hand is not None:
                by_hand.stop()
            if platform is not None:
                try:
                    platform.down()
                finally:
                    platform.emergency_stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.geteuid() == 0 and not account_existed and account in officina_accounts():
                subprocess.run(["userdel", account], capture_output=True)

    if spark_results:
        print_table(f"A new Spark cluster of {WORKERS} workers ({WORKER_CORES} core, {WORKER_MEMORY_GIB} GiB each) to "
                    f"the result of spark.range({JOB_ROWS}).count(), seconds ({os.cpu_count()} cores; {args.repeat} "
                    "clusters per system after one warm-up, alternating)", spark_results)
    if condor_results:
        print_table("2 Dask workers as HTCondor jobs (1 core, 512 MiB each) to the result of a dask.array sum, "
                    f"seconds ({os.cpu_count()} cores; {args.repeat} rounds per system after one warm-up, "
                    "rotating)", condor_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
