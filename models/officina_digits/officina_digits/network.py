"""The network and its data: a small Keras CNN on scikit-learn's bundled 8×8 digits.

Only DEEPaaS's worker processes import this module (warm, train, predict): TensorFlow's
import takes seconds, and the API process, which only declares arguments, never pays it.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from . import api, data, runs  # noqa: E402

_loaded: tuple[Path, keras.Model] | None = None


def dataset():
    """Network inputs (0..1, with a channel axis) and labels: x_train, y_train, x_test, y_test."""
    images, labels, train_idx, test_idx = data.split()
    x = (images / data.INK_MAX)[..., None]
    return x[train_idx], labels[train_idx], x[test_idx], labels[test_idx]


def build(learning_rate: float) -> keras.Model:
    model = keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(data.CLASSES, activation="softmax"),
    ])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class ProgressFile(keras.callbacks.Callback):
    """Each epoch's metrics to $OFFICINA_MODEL_DIR/progress.json (runs.write_progress)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self.history: dict[str, list[float]] = {}

    def on_train_begin(self, logs=None):
        runs.write_progress(0, self.epochs, self.history)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        runs.write_progress(epoch + 1, self.epochs, self.history)


def train(epochs: int, learning_rate: float, batch_size: int, validation_split: float, seed: int,
          origin: str = "train") -> dict:
    """Train a fresh network, keep it as a new run, and return the run's metrics."""
    global _loaded
    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = dataset()
    model = build(learning_rate)
    fitted = model.fit(
        x_train, y_train, epochs=epochs, batch_size=batch_size,
        validation_split=validation_split, verbose=0, callbacks=[ProgressFile(epochs)],
    )
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    history = {name: [float(v) for v in values] for name, values in fitted.history.items()}
    validation = int(len(x_train) * validation_split) if validation_split else 0

    run = runs.new_run()
    try:
        model.save(run / runs.MODEL_FILE)
        metrics = {
            "run": run.name,
            "path": str(run),
            "origin": origin,
            "args": {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
                     "validation_split": validation_split, "seed": seed},
            "loss": history["loss"][-1],
            "accuracy": history["accuracy"][-1],
            "val_loss": history["val_loss"][-1] if "val_loss" in history else None,
            "val_accuracy": history["val_accuracy"][-1] if "val_accuracy" in history else None,
            "test_loss": float(test_loss),
            "test_accuracy": float(test_accuracy),
            # Per epoch: loss, accuracy and, with a validation split, val_loss, val_accuracy.
            "history": history,
            "samples": {"train": len(x_train) - validation, "validation": validation, "test": len(x_test)},
            "seconds": round(time.monotonic() - started, 3),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {name: metadata.version(name) for name in ("keras", "tensorflow-cpu", "officina-digits")},
        }
        runs.finish(run, metrics)
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise
    _loaded = (run, model)
    return metrics


def latest_model() -> tuple[Path, keras.Model]:
    """What predict uses: the latest run's network, trained first if there is none yet (a
    server started with --nowarm)."""
    if runs.latest_run() is None:
        ensure_trained()
    return current()


def ensure_trained() -> Path:
    """The latest run, after training one with the default arguments if there is none (so
    that predict works out of the box). One process trains; the others wait and load it."""
    with runs.lock():
        if runs.latest_run() is None:
            train(**api.train_defaults(), origin="default model, trained at warm-up")
    return current()[0]


def current() -> tuple[Path, keras.Model]:
    """The latest finished run and its network: loaded once per process, and again when a
    newer run appears (trained here, by another worker, or by an earlier server)."""
    global _loaded
    run = runs.latest_run()
    if run is None:
        raise LookupError("no trained model yet: train one first")
    if _loaded is None or _loaded[0] != run:
        _loaded = (run, keras.models.load_model(run / runs.MODEL_FILE))
    return _loaded


def probabilities(model: keras.Model, grid: np.ndarray) -> np.ndarray:
    """The 10 class probabilities for one 8×8 grid in the data set's 0..16 scale."""
    x = (np.asarray(grid, dtype=np.float32) / data.INK_MAX)[None, ..., None]
    return np.asarray(model(x, training=False), dtype=np.float64)[0]
