"""Training runs on disk: one folder per run under the model directory, so that a restarted
server, or another of DEEPaaS's worker processes, finds the latest trained model again.

    $OFFICINA_MODEL_DIR/                 default ~/.officina/models/officina_digits
        .lock                            serialises "train a default model if there is none"
        runs/<UTC time>-<random>/
            model.keras                  the trained network (architecture and weights)
            metrics.json                 written last: a run without it is unfinished

Run names sort by time, so the latest finished run is the last name with a metrics.json.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import secrets
import time
from pathlib import Path

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
DEFAULT_MODEL_DIR = "~/.officina/models/officina_digits"


def model_dir() -> Path:
    return Path(os.environ.get("OFFICINA_MODEL_DIR") or DEFAULT_MODEL_DIR).expanduser()


def runs_dir() -> Path:
    return model_dir() / "runs"


def new_run() -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = runs_dir() / f"{stamp}-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


def finished_runs() -> list[Path]:
    if not runs_dir().is_dir():
        return []
    return sorted(p for p in runs_dir().iterdir() if (p / METRICS_FILE).is_file())


def latest_run() -> Path | None:
    runs = finished_runs()
    return runs[-1] if runs else None


def finish(run: Path, metrics: dict) -> None:
    """Write the run's metrics atomically: from then on the run counts as finished."""
    partial = run / (METRICS_FILE + ".partial")
    partial.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(partial, run / METRICS_FILE)


def read_metrics(run: Path) -> dict:
    return json.loads((run / METRICS_FILE).read_text())


@contextlib.contextmanager
def lock():
    """Held across processes (DEEPaaS warms every worker at once)."""
    model_dir().mkdir(parents=True, exist_ok=True)
    with open(model_dir() / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


PROGRESS_FILE = "progress.json"


def write_progress(done: int, epochs: int, history: dict) -> None:
    """The training's progress, after every epoch (atomically): DEEPaaS reports a training only
    when it ends; a notebook of the model's owner reads this file to draw loss and accuracy live."""
    folder = model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PROGRESS_FILE + ".tmp")
    tmp.write_text(json.dumps({"epoch": done, "epochs": epochs, "history": history, "time": time.time()}))
    os.replace(tmp, folder / PROGRESS_FILE)
