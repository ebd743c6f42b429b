"""The example model (models/officina_digits) behind a real DEEPaaS server, run from the model
servers' own environment (scripts/model-env.sh) on loopback, used as a person would: the
Swagger spec, the metadata, one epoch of training, predictions on the shipped samples and on
pictures of other sizes, formats and polarity, bad input answered with a clear 4xx, and a
restarted server answering with the network trained before the restart.

The tests share one server and one model folder, and run in order. Timings go to
test-artifacts/models-timings.json.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from platform_harness import free_ports, wait_for

# Making the environment from nothing (about a minute) happens in the first test's setup.
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
SAMPLES = sorted((REPO / "models/officina_digits/officina_digits/samples").glob("*.png"))
MODEL = "officina_digits"
API = f"/v2/models/{MODEL}"
TIMINGS: dict = {}


def sample_label(path: Path) -> int:
    return int(path.name.split("-")[0])  # <digit>-<index in the data set>.png


class DeepaasServer:
    """`deepaas-run` serving officina_digits on a free loopback port, ended by its PID."""

    def __init__(self, deepaas_run: Path, model_dir: Path, home: Path, log: Path):
        self.deepaas_run, self.model_dir, self.home, self.log = deepaas_run, model_dir, home, log
        self.proc: subprocess.Popen | None = None
        self.client: httpx.Client | None = None

    def start(self, timeout: float = 180) -> float:
        """Start and wait until it answers; returns the seconds that took."""
        port = free_ports(1)[0]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HOME=str(self.home), OFFICINA_MODEL_DIR=str(self.model_dir))
        started = time.monotonic()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [str(self.deepaas_run), "--listen-ip", "127.0.0.1", "--listen-port", str(port),
                 "--model-name", MODEL],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=120)
        wait_for(self._answers, timeout=timeout, what="deepaas-run to answer", interval=0.1)
        return time.monotonic() - started

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"deepaas-run exited with {self.proc.returncode}:\n{self.log.read_text()[-5000:]}")
        try:
            return self.client.get("/swagger.json").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> list[psutil.Process]:
        """SIGTERM to the server's PID; returns its worker processes that outlived it (killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
        self.client.close()
        return alive


@pytest.fixture(scope="module")
def deepaas_run() -> Path:
    env_dir = os.environ.get("OFFICINA_MODEL_ENV", "/var/cache/officina/model-env")
    started = time.monotonic()
    made = subprocess.run([str(REPO / "scripts/model-env.sh"), env_dir], capture_output=True, text=True)
    assert made.returncode == 0, f"scripts/model-env.sh failed:\n{made.stdout}\n{made.stderr[-5000:]}"
    TIMINGS["model_env_s"] = round(time.monotonic() - started, 2)
    return Path(made.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-dir")


@pytest.fixture(scope="module")
def server(deepaas_run, model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deepaas")
    (root / "home").mkdir()
    server = DeepaasServer(deepaas_run, model_dir, root / "home", root / "deepaas-run.log")
    TIMINGS["start_to_ready_s"] = round(server.start(), 2)
    yield server
    server.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "models-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


@pytest.fixture(scope="module")
def trained(server) -> dict:
    """One epoch of training, started and polled as a client does."""
    started = time.monotonic()
    answer = server.client.post(f"{API}/train/", params={"epochs": 1})
    assert answer.status_code == 200, answer.text
    uuid = answer.json()["uuid"]

    def finished():
        status = server.client.get(f"{API}/train/{uuid}").json()
        return status if status["status"] != "running" else None

    status = wait_for(finished, timeout=300, what="the training to finish", interval=0.1)
    TIMINGS["train_1_epoch_s"] = round(time.monotonic() - started, 2)
    return status


def predict(server: DeepaasServer, content: bytes, filename: str = "digit.png",
            content_type: str = "image/png") -> httpx.Response:
    return server.client.post(f"{API}/predict/", files={"image": (filename, content, content_type)})


def test_swagger_lists_train_and_predict_with_their_arguments(server):
    spec = server.client.get("/swagger.json").json()
    train = {p["name"]: p for p in spec["paths"][f"{API}/train/"]["post"]["parameters"]}
    assert set(train) == {"epochs", "learning_rate", "batch_size", "validation_split", "seed"}
    assert (train["epochs"]["minimum"], train["epochs"]["maximum"], train["epochs"]["default"]) == (1, 50, 5)
    assert train["learning_rate"]["exclusiveMinimum"] is True and train["learning_rate"]["maximum"] == 1
    assert (train["batch_size"]["minimum"], train["batch_size"]["maximum"]) == (1, 1024)
    predict_args = spec["paths"][f"{API}/predict/"]["post"]["parameters"]
    assert [(p["name"], p["in"], p["type"], p["required"]) for p in predict_args] == [
        ("image", "formData", "file", True)
    ]
    assert f"{API}/train/{{uuid}}" in spec["paths"]


def test_metadata_describes_the_model_and_the_default_network_trained_at_start(server):
    meta = server.client.get(f"{API}/").json()
    assert meta["id"] == meta["name"] == MODEL
    assert meta["license"] == "Apache-2.0" and meta["version"] == "0.1.0"
    assert "digit" in meta["description"]
    # Nothing was trained in the empty model folder: warm-up trained the default network.
    assert meta["latest_run"]["origin"].startswith("default")
    assert meta["latest_run"]["args"]["epochs"] == 5
    assert meta["latest_run"]["test_accuracy"] > 0.8


def test_train_one_epoch_reports_metrics_and_keeps_the_run(server, trained, model_dir):
    assert trained["status"] == "done", trained
    metrics = trained["result"]["output"]
    assert metrics["args"]["epochs"] == 1
    for name in ("accuracy", "val_accuracy", "test_accuracy"):
        assert metrics[name] > 0.1, (name, metrics)  # chance is 0.1; in practice about 0.7-0.95
    assert {name: len(values) for name, values in metrics["history"].items()} == {
        "loss": 1, "accuracy": 1, "val_loss": 1, "val_accuracy": 1
    }
    run = model_dir / "runs" / metrics["run"]
    assert (run / "model.keras").stat().st_size > 10_000
    assert json.loads((run / "metrics.json").read_text()) == metrics
    listed = server.client.get(f"{API}/train/").json()
    assert [t["uuid"] for t in listed] == [trained["uuid"]]


def test_predict_the_shipped_samples(server, trained):
    assert len(SAMPLES) == 10
    right = 0
    for sample in SAMPLES:
        answer = predict(server, sample.read_bytes(), sample.name)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        probabilities = result["probabilities"]
        assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert result["label"] == max(range(10), key=probabilities.__getitem__)
        assert result["probability"] == probabilities[result["label"]]
        assert result["run"] == trained["result"]["output"]["run"]  # the network just trained
        assert result["inverted"] is True  # dark ink on white paper
        assert len(result["pixels"]) == 8 and all(len(row) == 8 for row in result["pixels"])
        right += result["label"] == sample_label(sample)
    assert right >= 8, f"only {right} of 10 samples recognised"


def test_predict_pictures_of_other_sizes_formats_and_polarity(server):
    """The same digit as a large RGB JPEG, a small light-on-dark PNG of an odd size and an
    RGBA PNG with transparent paper: the same answer as for the shipped PNG."""
    sample = SAMPLES[0]
    expected = predict(server, sample.read_bytes(), sample.name).json()
    gray = Image.open(sample).convert("L")

    def encoded(picture: Image.Image, fmt: str, **options) -> bytes:
        out = io.BytesIO()
        picture.save(out, fmt, **options)
        return out.getvalue()

    big_rgb = gray.resize((600, 600), Image.Resampling.BILINEAR).convert("RGB")
    light_on_dark = Image.eval(gray, lambda v: 255 - v).resize((37, 37), Image.Resampling.BILINEAR)
    transparent = Image.new("RGBA", gray.size, (0, 0, 0, 0))
    transparent.putalpha(Image.eval(gray, lambda v: 255 - v))
    variants = {
        "big.jpg": (encoded(big_rgb, "JPEG", quality=90), "image/jpeg", True),
        "light-on-dark.png": (encoded(light_on_dark, "PNG"), "image/png", False),
        "transparent.png": (encoded(transparent, "PNG"), "image/png", True),
    }
    for name, (content, content_type, inverted) in variants.items():
        answer = predict(server, content, name, content_type)
        assert answer.status_code == 200, (name, answer.text)
        result = answer.json()
        assert (result["label"], result["inverted"]) == (expected["label"], inverted), name


def test_a_file_that_is_not_a_png_or_jpeg_is_a_4xx_naming_the_field(server):
    answer = predict(server, b"just some words\n", "note.txt", "text/plain")
    assert answer.status_code == 422
    assert "not a PNG or JPEG" in answer.json()["image"][0]
    gif = io.BytesIO()
    Image.open(SAMPLES[0]).save(gif, "GIF")
    answer = predict(server, gif.getvalue(), "digit.gif", "image/gif")
    assert answer.status_code == 422 and "not a PNG or JPEG" in answer.json()["image"][0]
    # Sent as a plain form field rather than a file.
    answer = server.client.post(f"{API}/predict/", files={"image": (None, "a digit")})
    assert answer.status_code == 422 and "file upload" in answer.json()["image"][0]


def test_a_damaged_or_blank_picture_is_a_400_with_a_message(server):
    answer = predict(server, b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "broken.png")
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("broken.png: not a readable PNG or JPEG image")
    assert "/tmp" not in answer.text  # no server paths in answers
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, "PNG")
    answer = predict(server, blank.getvalue(), "blank.png")
    assert answer.status_code == 400 and "blank" in answer.json()["message"]


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", 1000), ("epochs", "five"), ("learning_rate", 0),
    ("learning_rate", 2), ("batch_size", 0), ("validation_split", 0.9),
])
def test_train_arguments_out_of_range_are_a_4xx_naming_the_field(server, trained, field, value):
    answer = server.client.post(f"{API}/train/", params={field: value})
    assert answer.status_code == 422, answer.text
    assert list(answer.json()) == [field], answer.text
    # Refused before anything started.
    assert len(server.client.get(f"{API}/train/").json()) == 1


def test_predict_without_a_file_is_a_4xx_naming_the_field(server):
    answer = server.client.post(f"{API}/predict/")
    assert answer.status_code == 422
    assert answer.json() == {"image": ["Missing data for required field."]}
    answer = server.client.post(f"{API}/predict/", files={"other": ("x.png", SAMPLES[0].read_bytes(), "image/png")})
    assert answer.status_code == 422 and "image" in answer.json()


def test_predict_latency(server):
    content = SAMPLES[0].read_bytes()
    latencies = []
    for _ in range(20):
        started = time.perf_counter()
        answer = predict(server, content)
        latencies.append(time.perf_counter() - started)
        assert answer.status_code == 200
    TIMINGS["predict_median_ms"] = round(statistics.median(latencies) * 1000, 1)
    TIMINGS["predict_max_ms"] = round(max(latencies) * 1000, 1)
    assert statistics.median(latencies) < 2


def test_a_restarted_server_answers_with_the_trained_network(server, trained, model_dir):
    runs_before = sorted(p.name for p in (model_dir / "runs").iterdir())
    before = {s.name: predict(server, s.read_bytes(), s.name).json() for s in SAMPLES[:3]}

    assert server.stop() == [], "deepaas-run's worker processes outlived it"
    TIMINGS["restart_to_ready_s"] = round(server.start(), 2)

    assert sorted(p.name for p in (model_dir / "runs").iterdir()) == runs_before  # nothing retrained
    assert server.client.get(f"{API}/").json()["latest_run"]["run"] == trained["result"]["output"]["run"]
    for sample in SAMPLES[:3]:
        after = predict(server, sample.read_bytes(), sample.name).json()
        assert after["run"] == trained["result"]["output"]["run"]
        assert after["probabilities"] == pytest.approx(before[sample.name]["probabilities"], abs=1e-5)
    # The server's own list of trainings does not survive, the runs on disk do.
    assert server.client.get(f"{API}/train/").json() == []
