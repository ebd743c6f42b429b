"""Every tutorial in example-notebooks/ runs as a user runs it: uploaded into their session and
executed there, as their account, against the embedded platform; then read back and checked
for what the user would look at."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import pytest

from platform_harness import HubSession, run_in_terminal, start_platform, wait_for

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "example-notebooks"
CONDOR_ROOT = Path(os.environ.get("OFFICINA_CONDOR_ROOT", "/var/cache/officina/condor-root"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
EXECUTION_TIMEOUT = 300  # s per cell, and about the whole notebook's budget


@pytest.fixture(scope="module")
def platform(platform_roots):
    """The embedded platform with its HTCondor pool (the HTCondor tutorial needs it; the root
    is made by the project's own script, cached after the first run)."""
    if os.geteuid() != 0:
        pytest.fail("the embedded HTCondor pool needs root (as CI runs)")
    made = subprocess.run(["bash", str(REPO / "scripts" / "condor-root.sh"), str(CONDOR_ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-2000:]
    p = start_platform(platform_roots("notebooks"), condor={"enabled": True, "root": str(CONDOR_ROOT)},
                       data={"enabled": True})
    yield p
    try:
        p.down()
    finally:
        p.emergency_stop()


def test_the_folder_has_notebooks():
    # An empty parameter list would only skip the test below; an empty folder is a failure.
    assert NOTEBOOKS, f"no notebooks in {FOLDER}"


@pytest.fixture(scope="module")
def alice(platform):
    person = HubSession(platform, "alice")
    person.login()
    person.start_server()
    return person


@pytest.fixture(scope="module")
def alice_token(alice):
    return alice.token()


def outputs(notebook: dict) -> list[dict]:
    return [out for cell in notebook["cells"] if cell["cell_type"] == "code" for out in cell["outputs"]]


def printed(notebook: dict) -> str:
    return "".join(out["text"] for out in outputs(notebook) if out["output_type"] == "stream")


def check_z_peak(notebook: dict) -> str:
    """The fitted Z mass and the plot of a dimuon tutorial; returns what it printed."""
    text = printed(notebook)
    fitted = re.search(r"Fitted Z mass:\s+([\d.]+)", text)
    assert fitted, text
    assert abs(float(fitted.group(1)) - 91.19) < 0.5, fitted.group(0)
    assert any("image/png" in out.get("data", {}) for out in outputs(notebook)), "no plot"
    return text


def check_dask_dimuon_analysis(platform, notebook: dict) -> None:
    text = check_z_peak(notebook)
    link = re.search(r"Dashboard: (\S+)", text)
    assert link, text
    # Behind the hub's login, on the address a browser uses: not the gateway's own port.
    assert link.group(1).startswith(urljoin(platform.url, "services/dask-dashboards/clusters/")), link.group(1)


def check_spark_dimuon_analysis(platform, notebook: dict) -> None:
    text = check_z_peak(notebook)
    link = re.search(r"Spark UI: (\S+)", text)
    assert link, text
    # Through the resource manager's proxy behind the hub's login: not the master's loopback port.
    assert link.group(1).startswith(urljoin(platform.url, "services/resources/ui/")), link.group(1)
    app = re.search(r"Application UI: (\S+)", text)
    assert app and app.group(1).startswith(link.group(1) + "proxy/app-"), text
    assert re.search(r"Spark cluster [0-9a-f]+: stopped", text), text


def check_htcondor_dimuon_analysis(platform, notebook: dict) -> None:
    text = check_z_peak(notebook)
    assert re.search(r"HTCondor workers ([0-9a-f]+): 2 execute nodes", text), text
    rid = re.search(r"HTCondor workers ([0-9a-f]+)", text).group(1)
    # Every job ran on one of the user's own nodes, and the Dask workers read every file.
    jobs = re.findall(r"job \d: seed \d: (\d+) of 750000 events in the window, on (\S+)", text)
    assert len(jobs) == 4, text
    assert all(re.fullmatch(rf"slot1_\d+@{rid}-[12]@officina", slot) for _, slot in jobs), jobs
    ran_on = [count for count, _ in jobs]
    assert "2 Dask workers, running as HTCondor jobs" in text, text
    assert f"events per job, read by the workers: [{', '.join(ran_on)}]" in text, text
    assert f"HTCondor workers {rid}: stopped" in text, text


def check_deepaas_train_and_serve(platform, notebook: dict) -> None:
    text = printed(notebook)
    assert "Refused:" in text and "epochs" in text.split("Refused:", 1)[1], text
    run = re.search(r"test accuracy ([\d.]+) after 8 epochs", text)
    assert run and float(run.group(1)) > 0.5, text  # chance is 0.1
    assert re.search(r"Predicted digit: \d \(\d+%\)", text), text
    assert any("image/png" in out.get("data", {}) for out in outputs(notebook)), "no plot"
    assert re.search(r"Model server [0-9a-f]+: stopped", text), text


def check_digits_app(platform, notebook: dict) -> None:
    widgets = [out for out in outputs(notebook) if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    assert widgets, "the app shows no widget"


def check_federated_data(platform, notebook: dict) -> None:
    text = printed(notebook)
    assert "site-a: exports /store/data; you may read /store/data" in text, text
    assert "/store/data/open/dimuon-2026 (site-a): 3 files" in text, text
    assert "['events-000.root', 'events-001.root', 'summary.parquet']" in text, text
    assert "400000 events from the mount" in text, text
    peak = re.search(r"Z peak: mean ([0-9.]+) GeV", text)
    assert peak and abs(float(peak.group(1)) - 91.19) < 0.5, text
    assert "same events by URL and by mount: True" in text, text
    held = re.search(r"cache holds ([0-9.]+) of ([0-9.]+) MB", text)
    assert held and held.group(1) == held.group(2), text
    assert "unmounted: True" in text, text
    images = [out for out in outputs(notebook) if "image/png" in out.get("data", {})]
    assert len(images) >= 2, "the histogram and the cache chart"


# What each tutorial shows its reader, beyond running without errors.
EXPECTED = {
    "federated-data.ipynb": check_federated_data,
    "deepaas-train-and-serve.ipynb": check_deepaas_train_and_serve,
    "digits-app.ipynb": check_digits_app,
    "htcondor-dimuon-analysis.ipynb": check_htcondor_dimuon_analysis,
    "dask-dimuon-analysis.ipynb": check_dask_dimuon_analysis,
    "spark-dimuon-analysis.ipynb": check_spark_dimuon_analysis,
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_session(platform, alice, alice_token, path):
    headers = {"Authorization": f"token {alice_token}"}
    contents = urljoin(platform.url, "user/alice/api/contents/")
    executed = f"executed-{path.name}"
    r = httpx.put(contents + quote(path.name), headers=headers, timeout=30,
                  json={"type": "notebook", "format": "json", "content": json.loads(path.read_text())})
    assert r.status_code in (200, 201), r.text

    started = time.monotonic()
    log = run_in_terminal(
        platform, "alice", alice_token,
        f"jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout={EXECUTION_TIMEOUT}"
        f" --output {executed} {path.name}; echo nbconvert-exit=$?",
        timeout=EXECUTION_TIMEOUT + 60,
    )
    took = time.monotonic() - started
    assert "nbconvert-exit=0" in log, log

    r = httpx.get(contents + quote(executed), headers=headers, params={"content": 1}, timeout=30)
    assert r.status_code == 200, r.text
    notebook = r.json()["content"]
    ARTIFACTS.mkdir(exist_ok=True)  # to look at, whether or not the checks below pass
    (ARTIFACTS / executed).write_text(json.dumps(notebook, indent=1))
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert all(cell["execution_count"] for cell in code_cells), "not every cell ran"
    errors = [out for out in outputs(notebook) if out["output_type"] == "error"]
    assert not errors, [(e["ename"], e["evalue"]) for e in errors]
    if path.name in EXPECTED:
        EXPECTED[path.name](platform, notebook)

    # A tutorial cleans up after itself: no cluster of alice's is left running, Dask or Spark.
    # (The gateway's REST API, not dask_gateway.Gateway, whose close() raises when called
    # again by __del__; the resource manager's REST API, as the session's client uses it.)
    def no_clusters() -> bool:
        dask = httpx.get(f"{platform.gateway_url}/api/v1/clusters/", timeout=10,
                         headers={"Authorization": f"jupyterhub {alice_token}"})
        assert dask.status_code == 200, dask.text
        resources = httpx.get(urljoin(platform.url, "services/resources/api/resources"), timeout=10, headers=headers)
        assert resources.status_code == 200, resources.text
        active = [res["id"] for res in resources.json() if res["phase"] in ("starting", "running", "stopping")]
        return dask.json() == {} and not active

    wait_for(no_clusters, timeout=30, what=f"{path.name}'s clusters to stop")
    print(f"{path.name}: executed in alice's session in {took:.0f} s")
