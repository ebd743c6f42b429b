"""Predictions from a DEEPaaS model: through the platform, against the bare server and against
calling `predict()` in-process, side by side in one run.

Measured for the shipped `officina_digits` model and one of its sample pictures (a 64×64 PNG):
latency of one prediction (median and p99 over `--requests` sequential requests, after 20
untimed ones) and throughput (predictions per second with 4 clients at once).

- Officina: the model server the resource manager starts (as the person's account, from the
  model servers' environment), called through the hub's proxy with the person's JupyterHub
  token: the proxy checks the token (cached by the service for a minute), the owner or the
  shared groups, and forwards to the server.
- bare server: `deepaas-run` from the same environment started by this benchmark on a free
  loopback port, called directly.
- in-process: the model's own `predict()` in a Python of that environment, with the same file
  (no HTTP, no DEEPaaS): what a DEEPaaS server costs on top of the model itself.

The same HTTP client code for both servers (httpx, one connection per client thread).

    .venv/bin/python benchmarks/models.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "tests"))

MODEL = "officina_digits"
MODEL_ENV = Path(os.environ.get("OFFICINA_MODEL_ENV", "/var/cache/officina/model-env"))
SAMPLE = sorted((ROOT / "models" / MODEL / MODEL / "samples").glob("*.png"))[0]
USER, PASSWORD = "modelbench", secrets.token_urlsafe(12)
CLIENTS = 4

IN_PROCESS = """
import json, os, shutil, sys, tempfile, time
from officina_digits import api
sample, count = sys.argv[1], int(sys.argv[2])

class Upload:  # what DEEPaaS hands predict(): a temporary copy, and the name it was sent as
    def __init__(self, path):
        self.filename, self.original_filename = path, os.path.basename(sample)

def once():
    fd, path = tempfile.mkstemp(suffix=".png"); os.close(fd)
    shutil.copyfile(sample, path)
    started = time.perf_counter()
    api.predict(image=Upload(path))
    return time.perf_counter() - started

api.warm()
for _ in range(20):
    once()
latencies = [once() for _ in range(count)]
started = time.perf_counter()
for _ in range(count):
    once()
print(json.dumps({"latencies": latencies, "throughput": count / (time.perf_counter() - started)}))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_http(api: str, headers: dict, count: int) -> dict:
    url = api.rstrip("/") + f"/v2/models/{MODEL}/predict/"
    content = SAMPLE.read_bytes()

    def call(client: httpx.Client) -> float:
        started = time.perf_counter()
        response = client.post(url, files={"image": (SAMPLE.name, content, "image/png")})
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text[:300]
        return elapsed

    with httpx.Client(headers=headers, timeout=60) as client:
        for _ in range(20):
            call(client)
        latencies = [call(client) for _ in range(count)]

    per_client = max(1, count // CLIENTS)

    def worker():
        with httpx.Client(headers=headers, timeout=60) as client:
            for _ in range(per_client):
                call(client)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "throughput": per_client * CLIENTS / (time.perf_counter() - started)}


def start_bare(folder: Path) -> tuple[subprocess.Popen, str]:
    from officina.hub.resources.spark_local import free_port

    port = free_port()
    env = {"PATH": f"{MODEL_ENV / 'bin'}:/usr/bin:/bin", "HOME": str(folder), "LANG": "C.UTF-8",
           "OFFICINA_MODEL_DIR": str(folder / "model"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(folder / "bare.log", "wb")
    proc = subprocess.Popen([str(MODEL_ENV / "bin" / "deepaas-run"), "--listen-ip", "127.0.0.1", "--listen-port",
                             str(port), "--model-name", MODEL], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    api = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(api + f"v2/models/{MODEL}/", timeout=2).status_code == 200:
                return proc, api
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise SystemExit(f"the bare server did not start: {(folder / 'bare.log').read_text()[-2000:]}")


def start_officina(root: Path):
    import yaml

    from platform_harness import HubSession, Platform

    users = root / "users.yaml"
    with os.fdopen(os.open(users, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        yaml.safe_dump({"users": [{"username": USER, "sub": "40000000-0000-4000-8000-000000000001", "password": PASSWORD,
                                   "name": "Model Bench", "email": f"{USER}@example.org", "groups": ["officina/users"]}]},
                       handle)
    (root / "officina").mkdir(mode=0o711)
    platform = Platform(root=root / "officina", overrides={
        "iam": {"standin": {"users_file": str(users)}}, "sessions": {"idle_timeout": 0}, "dask": {"enabled": False},
        "resources": {"model": {"env": str(MODEL_ENV)}}})
    platform.up()
    person = HubSession(platform, USER, PASSWORD)
    person.login()
    person.start_server()
    token = person.token()
    api = httpx.Client(base_url=f"{platform.url}services/resources/api/", timeout=120,
                       headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + 60
    while api.get("kinds").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    record = api.post("resources", json={"kind": "model", "model": MODEL}).json()
    deadline = time.monotonic() + 300
    while record["phase"] != "running" and time.monotonic() < deadline:
        assert record["phase"] != "failed", record
        time.sleep(0.5)
        record = api.get(f"resources/{record['id']}").json()
    return platform, token, record["endpoints"]["api"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    made = subprocess.run(["bash", str(ROOT / "scripts" / "model-env.sh"), str(MODEL_ENV)], capture_output=True, text=True)
    if made.returncode != 0:
        raise SystemExit(f"cannot make the model servers' environment: {made.stderr[-2000:]}")

    from platform_harness import officina_accounts

    from officina.hub.accounts import system_account_name

    account = system_account_name(USER)
    existed = os.geteuid() == 0 and account in officina_accounts()
    tmp = Path(tempfile.mkdtemp(prefix="officina-bench-models-"))
    tmp.chmod(0o711)
    platform = bare = None
    results = {}
    try:
        platform, token, api = start_officina(tmp)
        bare, bare_api = start_bare(tmp)
        results["Officina (through the hub)"] = measure_http(api, {"Authorization": f"token {token}"}, args.requests)
        results["bare deepaas server"] = measure_http(bare_api, {}, args.requests)
        out = subprocess.run([str(MODEL_ENV / "bin" / "python"), "-c", IN_PROCESS, str(SAMPLE), str(args.requests)],
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp),
                                                                  "OFFICINA_MODEL_DIR": str(tmp / "model"),
                                                                  "TF_CPP_MIN_LOG_LEVEL": "2"})
        if out.returncode != 0:
            raise SystemExit(f"in-process predict failed: {out.stderr[-2000:]}")
        results["predict() in-process"] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if bare is not None:
            # DEEPaaS's worker processes do not always end on TERM: the group is killed after 10 s.
            os.killpg(bare.pid, signal.SIGTERM)
            try:
                bare.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(bare.pid, signal.SIGKILL)
                bare.wait(10)
        if platform is not None:
            try:
                platform.down()
            finally:
                platform.emergency_stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if os.geteuid() == 0 and not existed and account in officina_accounts():
            subprocess.run(["userdel", account], capture_output=True)

    print(f"\nPredict {SAMPLE.name} with {MODEL} ({os.cpu_count()} cores; {args.requests} sequential requests after 20 "
          f"untimed; throughput with {CLIENTS} clients)\n")
    print("| system | p50, ms | p99, ms | predictions/s |")
    print("|---|---|---|---|")
    for name, result in results.items():
        lat = result["latencies"]
        print(f"| {name} | {statistics.median(lat) * 1000:.1f} | {percentile(lat, 0.99) * 1000:.1f} | "
              f"{result['throughput']:.0f} |")
    officina, bare_result = results["Officina (through the hub)"], results["bare deepaas server"]
    print(f"\nOfficina / bare server: p50 {statistics.median(officina['latencies']) / statistics.median(bare_result['latencies']):.2f}, "
          f"throughput {officina['throughput'] / bare_result['throughput']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
