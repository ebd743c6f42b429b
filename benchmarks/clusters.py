"""A Spark cluster on request: Officina's resource manager against the same cluster started by hand.

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

    .venv/bin/python benchmarks/clusters.py [--repeat 3]

Prints a Markdown table (median and p95 per system) and the ratios Officina / by hand.
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


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def start_officina(root: Path):
    """The platform, the person's account (a session started once, then stopped) and token."""
    from platform_harness import HubSession, Platform

    users_file = root / "users.yaml"
    write_users(users_file)
    (root / "officina").mkdir(mode=0o711)
    platform = Platform(root=root / "officina", overrides={
        "iam": {"standin": {"users_file": str(users_file)}}, "sessions": {"idle_timeout": 0},
        "dask": {"enabled": False}})
    platform.up()
    person = HubSession(platform, USER, PASSWORD)
    person.login()
    person.start_server()
    token = person.token()
    person.hub_api("DELETE", f"users/{USER}/server")
    deadline = time.monotonic() + 60
    while person.hub_api("GET", f"users/{USER}").json().get("servers") and time.monotonic() < deadline:
        time.sleep(0.5)
    return platform, Resources(url=f"{platform.url}services/resources/", token=token)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed clusters per system")
    args = parser.parse_args()

    from platform_harness import officina_accounts

    from officina.hub.accounts import system_account_name

    account = system_account_name(USER)
    account_existed = os.geteuid() == 0 and account in officina_accounts()
    results: dict[str, list[dict[str, float]]] = {"Officina": [], "by hand": []}
    # Not under /tmp/pytest-* (0700): the person's account must reach its home in the state.
    tmp = Path(tempfile.mkdtemp(prefix="officina-bench-"))
    platform = None
    by_hand = None
    try:
        tmp.chmod(0o711)
        (tmp / "officina").mkdir(mode=0o711)
        (tmp / "by-hand").mkdir(mode=0o700)
        platform, manager = start_officina(tmp / "officina")
        officina, by_hand = OfficinaSpark(manager), SparkByHand(tmp / "by-hand")
        for system in (officina, by_hand):
            system.round()  # warm-up
        for i in range(args.repeat):
            for system in ((officina, by_hand) if i % 2 == 0 else (by_hand, officina)):
                results[system.name].append(system.round())
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

    columns = [("ready", "cluster ready, s"), ("first", "first result, s")]
    print(f"\nA new Spark cluster of {WORKERS} workers ({WORKER_CORES} core, {WORKER_MEMORY_GIB} GiB each) to the result "
          f"of spark.range({JOB_ROWS}).count(), seconds ({os.cpu_count()} cores; {args.repeat} clusters per "
          f"system after one warm-up, alternating)\n")
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
        o, b = [r[key] for r in results["Officina"]], [r[key] for r in results["by hand"]]
        cells += [f"{statistics.median(o) / statistics.median(b):.2f}", f"{p95(o) / p95(b):.2f}"]
    print("| ratio Officina / by hand | " + " | ".join(cells) + " |")
    ratio = statistics.median(r["first"] for r in results["Officina"]) / statistics.median(
        r["first"] for r in results["by hand"])
    print(f"\nTarget: first result within 10 % of by hand: {'met' if ratio < 1.10 else 'missed'} "
          f"({(ratio - 1) * 100:+.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
