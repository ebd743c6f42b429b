"""A Dask cluster on request: Officina's dask-gateway against a plain dask-gateway and a LocalCluster.

Officina: the embedded platform (`officina up`, started as the tests start it). One person
logs in through the IAM stand-in and starts a session once (that creates their system
account; the session is stopped again so that it does not share the cores with the
measurement); their clusters are then asked of Officina's dask-gateway, a JupyterHub service
that checks the person's hub token, whose backend runs scheduler and workers as the person's
own account.
Baseline: what the dask-gateway docs set up for a test, from the same venv on free loopback
ports: dask-gateway-server with UnsafeLocalBackend (everything runs as the gateway's own
account) and SimpleAuthenticator, with Officina's scheduler and worker sizes (1 core, 1 G).
Floor: distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) inside this
process: no server, no proxy, no TLS.

The three run one after the other, with the same client code in this process and one
untimed warm-up cluster each. Every round asks for a new cluster and times:
  - first result: from asking for the cluster, through scale(2) and both workers connected,
    to the result of client.submit(sum, range(10));
  - CPU tasks: 40 pure-Python tasks of about 0.1 s each (bound by the workers' CPU: a
    worker held back by its account, limits or placement shows here; pure Python because
    the platform's environment need not have numpy, which dask.array needs);
  - small tasks: 2,000 tiny delayed tasks and their sum (bound by the scheduler, the
    client's connection and the workers' round trips);
then shuts the cluster down (not timed) and waits until it is gone.

    .venv/bin/python benchmarks/dask.py [--repeat 3]

Prints a Markdown table (median and p95 of each measurement per system) and the ratios
Officina / plain dask-gateway.
"""

from __future__ import annotations

import argparse
import operator
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder leads sys.path, and this file (dask.py) would shadow
# the dask package, here and in LocalCluster's worker processes (they copy sys.path).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "tests"))

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

# dask_gateway, httpx, psutil and the platform harness are imported where they are used:
# LocalCluster's worker processes (multiprocessing "spawn") re-run this module's top level,
# and the floor should not pay for imports that only the gateways need.

PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
USER, PASSWORD = "daskbench", secrets.token_urlsafe(12)
SMALL_TASKS = 2000
CPU_TASKS, CPU_STEPS = 40, 4_000_000


def spin(steps: int) -> int:
    return sum(i * i for i in range(steps))


def write_users(path: Path) -> None:
    import yaml

    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        yaml.safe_dump({"users": [
            {"username": USER, "sub": "20000000-0000-4000-8000-000000000001", "password": PASSWORD,
             "name": "Dask Bench", "email": f"{USER}@example.org", "groups": ["officina/users"]}]}, handle)


def one_round(new_cluster) -> dict[str, float]:
    """Seconds for each measurement on one fresh cluster; `new_cluster()` asks for a cluster
    of two workers and returns (client, shutdown)."""
    t0 = time.perf_counter()
    client, shutdown = new_cluster()
    try:
        client.wait_for_workers(2, timeout=180)
        assert client.submit(sum, range(10)).result() == 45
        first = time.perf_counter() - t0

        t0 = time.perf_counter()
        spun = client.gather(client.map(spin, [CPU_STEPS] * CPU_TASKS, pure=False))
        cpu = time.perf_counter() - t0
        n = CPU_STEPS
        assert spun == [(n - 1) * n * (2 * n - 1) // 6] * CPU_TASKS

        parts = [dask.delayed(operator.add)(i, 1) for i in range(SMALL_TASKS)]
        t0 = time.perf_counter()
        total = client.compute(dask.delayed(sum)(parts)).result()
        small = time.perf_counter() - t0
        assert total == SMALL_TASKS * (SMALL_TASKS + 1) // 2, total
    finally:
        shutdown()
    return {"first": first, "cpu": cpu, "small": small}


def measure(new_cluster, repeat: int) -> list[dict[str, float]]:
    one_round(new_cluster)  # warm-up: page cache, first imports, the gateway's first request
    return [one_round(new_cluster) for _ in range(repeat)]


def gateway_cluster_factory(gateway):
    def new_cluster():
        cluster = gateway.new_cluster()
        cluster.scale(2)
        client = cluster.get_client(set_as_default=False)

        def shutdown():
            client.close()
            cluster.shutdown()
            deadline = time.monotonic() + 60
            while gateway.list_clusters() and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1)  # the stopped processes' exits, before the next round starts

        return client, shutdown

    return new_cluster


def local_cluster():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster, set_as_default=False)

    def shutdown():
        client.close()
        cluster.close()
        time.sleep(1)

    return client, shutdown


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 400:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class PlainGateway:
    """dask-gateway-server as its docs set it up for a test, on free loopback ports."""

    def __init__(self, root: Path):
        from platform_harness import free_ports

        self.root = root
        self.port, self.api_port = free_ports(2)
        self.address = f"http://127.0.0.1:{self.port}"
        self.proxy_address = f"gateway://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from cryptography.fernet import Fernet

        clusters = self.root / "clusters"
        clusters.mkdir(mode=0o700)
        config = self.root / "dask_gateway_config.py"
        # UnsafeLocalBackend, never LocalBackend: run as root, dask-gateway 2026.3's
        # LocalBackend chowns `/` (see hub/dask_gateway.py). The password and the database
        # key stay in this 0600 file, out of argv and of the clusters' environment.
        text = f"""
c.DaskGateway.address = "127.0.0.1:{self.api_port}"
c.Proxy.address = "127.0.0.1:{self.port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.UnsafeLocalBackend.clusters_directory = {str(clusters)!r}
c.DBBackendBase.db_url = "sqlite:///{self.root / 'gateway.sqlite'}"
c.DBBackendBase.db_encrypt_keys = [{Fernet.generate_key().decode()!r}]
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {self.password!r}
c.ClusterConfig.scheduler_cmd = [{str(VENV_BIN / 'dask')!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{str(VENV_BIN / 'dask')!r}, "worker"]
c.ClusterConfig.scheduler_cores = 1
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
"""
        with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(text)
        log = open(self.root / "gateway.log", "ab")
        self.proc = subprocess.Popen([str(VENV_BIN / "dask-gateway-server"), "-f", str(config)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.root)
        log.close()
        try:
            wait_http(f"{self.address}/api/health")
        except RuntimeError:
            raise RuntimeError((self.root / "gateway.log").read_text()[-3000:]) from None

    def gateway(self):
        from dask_gateway import Gateway
        from dask_gateway.auth import BasicAuth

        return Gateway(self.address, proxy_address=self.proxy_address,
                       auth=BasicAuth(USER, self.password))

    def stop(self) -> None:
        """The gateway stops its clusters on SIGTERM; whatever of them is left is killed by PID."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for process in family:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=10)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def measure_officina(root: Path, repeat: int) -> list[dict[str, float]]:
    from dask_gateway import Gateway
    from dask_gateway.auth import JupyterHubAuth
    from platform_harness import HubSession, Platform

    users_file = root / "users.yaml"
    write_users(users_file)
    (root / "officina").mkdir(mode=0o711)
    platform = Platform(root=root / "officina", overrides={
        "iam": {"standin": {"users_file": str(users_file)}}, "sessions": {"idle_timeout": 0}})
    try:
        platform.up()
        person = HubSession(platform, USER, PASSWORD)
        person.login()
        person.start_server()  # creates the person's account and home: their clusters run as it
        token = person.token()
        person.hub_api("DELETE", f"users/{USER}/server")
        deadline = time.monotonic() + 60
        while person.hub_api("GET", f"users/{USER}").json().get("servers") and time.monotonic() < deadline:
            time.sleep(0.5)
        gateway = Gateway(platform.gateway_url, proxy_address=f"gateway://127.0.0.1:{platform.config['dask']['port']}",
                          auth=JupyterHubAuth(api_token=token))
        try:
            return measure(gateway_cluster_factory(gateway), repeat)
        finally:
            gateway.close()
    finally:
        try:
            platform.down()
        finally:
            platform.emergency_stop()


def measure_plain_gateway(root: Path, repeat: int) -> list[dict[str, float]]:
    plain = PlainGateway(root)
    try:
        plain.start()
        gateway = plain.gateway()
        try:
            return measure(gateway_cluster_factory(gateway), repeat)
        finally:
            gateway.close()
    finally:
        plain.stop()


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed clusters per system")
    args = parser.parse_args()

    from platform_harness import officina_accounts

    from officina.hub.accounts import system_account_name

    account = system_account_name(USER)
    account_existed = os.geteuid() == 0 and account in officina_accounts()
    results: dict[str, list[dict[str, float]]] = {}
    # Not under /tmp/pytest-* (0700): the person's account must reach its home in the state.
    tmp = Path(tempfile.mkdtemp(prefix="officina-bench-"))
    try:
        tmp.chmod(0o711)
        (tmp / "officina").mkdir(mode=0o711)
        (tmp / "plain").mkdir(mode=0o700)
        results["Officina"] = measure_officina(tmp / "officina", args.repeat)
        results["plain dask-gateway"] = measure_plain_gateway(tmp / "plain", args.repeat)
        results["LocalCluster"] = measure(local_cluster, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.geteuid() == 0 and not account_existed and account in officina_accounts():
            subprocess.run(["userdel", account], capture_output=True)

    columns = [("first", "first result, s"), ("cpu", f"{CPU_TASKS} CPU tasks, s"), ("small", f"{SMALL_TASKS} tasks, s")]
    print(f"\nA new cluster of 2 workers (1 core, 1 G each), seconds ({os.cpu_count()} cores; "
          f"{args.repeat} clusters per system after one warm-up)\n")
    header = "| system | " + " | ".join(f"{label} median | {label} p95" for _, label in columns) + " | tasks/s median |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, rounds in results.items():
        cells = []
        for key, _ in columns:
            values = [r[key] for r in rounds]
            cells += [f"{statistics.median(values):.2f}", f"{p95(values):.2f}"]
        rate = SMALL_TASKS / statistics.median([r["small"] for r in rounds])
        print(f"| {name} | " + " | ".join(cells) + f" | {rate:.0f} |")
    officina, plain = results["Officina"], results["plain dask-gateway"]
    cells = []
    for key, _ in columns:
        o, b = [r[key] for r in officina], [r[key] for r in plain]
        cells += [f"{statistics.median(o) / statistics.median(b):.2f}", f"{p95(o) / p95(b):.2f}"]
    rate_ratio = statistics.median([r["small"] for r in plain]) / statistics.median([r["small"] for r in officina])
    print("| ratio Officina / plain dask-gateway | " + " | ".join(cells) + f" | {rate_ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
