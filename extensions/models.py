"""DEEPaaS models from a notebook: serve one, train it, ask it for predictions.

    server = officina.lab.serve("officina_digits", share_with=["officina/users"])
    server.train(epochs=3)               # progress bar and, for its owner, a live loss plot
    server.predict("digit.png")          # {"label": 7, "probabilities": [...], ...}
    officina.lab.model_servers()         # yours and those shared with your groups

The server is started by the hub's resource manager (DEEPaaS in the model servers' own
environment, as your account) and reached through the hub's proxy: callers are its owner and
the members of the groups it is shared with, each with their own JupyterHub token. Train and
predict arguments come from the server's own Swagger spec (the model's declaration), so what
is checked here is what the server checks.
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
from pathlib import Path

import httpx

from .resources import ResourceError, Resources, create_running


class ModelError(RuntimeError):
    """What a model server refused, in its words."""


def serve(model: str | None = None, package: str | None = None, share_with: list[str] | None = None,
          timeout: float = 300, **options) -> ModelServer:
    """Start a DEEPaaS server for a shipped model (`model`, one of the platform's catalogue) or
    for your own package (`package`: a folder in your home, relative to it, holding a Python
    package with the DEEPaaS v2 functions; the server restarts when you change its code).
    `share_with`: groups of yours whose members may call it too."""
    request = dict(options)
    if model is not None:
        request["model"] = model
    if package is not None:
        request["package"] = package
    if share_with is not None:
        request["share_with"] = list(share_with)
    return ModelServer(create_running("model", None, timeout, **request))


def model_servers() -> list[dict]:
    """The running model servers you may call: yours and those shared with a group of yours."""
    return Resources()._call("GET", "api/models")


def stop_model(resource_id: str) -> dict:
    return Resources().delete(resource_id)


class ModelServer:
    """A running DEEPaaS server, by its record (from serve() or model_servers())."""

    def __init__(self, record: dict, token: str | None = None):
        self.record = record
        self.id = record["id"]
        self.model = record.get("model") or record["endpoints"]["model"]
        api = record.get("api") or record["endpoints"]["api"]
        self.http = httpx.Client(base_url=api, timeout=120,
                                 headers={"Authorization": f"token {token or os.environ.get('JUPYTERHUB_API_TOKEN')}"})
        self.path = f"v2/models/{self.model}/"

    def __repr__(self) -> str:
        return f"<ModelServer {self.id}: {self.model} of {self.record.get('owner', 'you')}>"

    def _call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ModelError(f"{_reason(response)} (HTTP {response.status_code})")
        return response.json()

    def metadata(self) -> dict:
        return self._call("GET", self.path)

    def spec(self) -> dict:
        return self._call("GET", "swagger.json")

    def arguments(self, action: str) -> dict[str, dict]:
        """The declared arguments of "train" or "predict" (Swagger parameters by name)."""
        operation = self.spec()["paths"][f"/{self.path}{action}/"]["post"]
        return {p["name"]: p for p in operation.get("parameters", []) if p.get("in") in ("query", "formData")}

    def start_training(self, **args) -> dict:
        return self._call("POST", f"{self.path}train/", params=args)

    def training(self, uuid: str) -> dict:
        return self._call("GET", f"{self.path}train/{uuid}")

    def trainings(self) -> list[dict]:
        return self._call("GET", f"{self.path}train/")

    def train(self, timeout: float = 1800, plot: bool = True, **args) -> dict:
        """Train with `args` (checked by the server against the model's declaration), showing
        progress; returns the finished training (its `result`). In a notebook of the model's
        owner, the loss and accuracy are drawn epoch by epoch."""
        from .clusters import _progress

        started = self.start_training(**args)
        epochs = int(args.get("epochs") or self.arguments("train").get("epochs", {}).get("default") or 1)
        update = _progress(epochs, "Epochs")
        live = _LivePlot(self.model) if plot else None
        deadline = time.monotonic() + timeout
        while True:
            status = self.training(started["uuid"])
            if live is not None:
                update(live.refresh())
            if status.get("status") in ("done", "error", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"training {started['uuid']} not done within {timeout:g} s")
            time.sleep(0.5)
        if status["status"] != "done":
            raise ModelError(f"training {started['uuid']} {status['status']}: {status.get('message', '')}")
        update(epochs)
        if live is not None:
            live.refresh(final=status.get("result", {}).get("output"))
        return status

    def cancel_training(self, uuid: str) -> dict:
        return self._call("DELETE", f"{self.path}train/{uuid}")

    def predict(self, image, filename: str | None = None) -> dict:
        """Predict from a picture: a path, or bytes (then `filename` names it)."""
        if isinstance(image, (str, Path)):
            filename = filename or Path(image).name
            image = Path(image).read_bytes()
        filename = filename or "upload.png"
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        answer = self._call("POST", f"{self.path}predict/", files={"image": (filename, image, kind)})
        return answer

    def stop(self) -> dict:
        return stop_model(self.id)


def _reason(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason_phrase
    if isinstance(data, dict):
        for key in ("message", "error", "errors", "json", "query", "form"):
            if key in data:
                value = data[key]
                return value if isinstance(value, str) else json.dumps(value)
        return json.dumps(data)
    return str(data)


class _LivePlot:
    """Loss and accuracy per epoch from the training's progress file in the owner's home
    ($OFFICINA_MODEL_DIR/progress.json, written by the model after every epoch)."""

    def __init__(self, model: str):
        self.file = Path.home() / ".officina" / "models" / model / "progress.json"
        self.since = time.time()
        self.figure = self.output = None
        try:
            from IPython import get_ipython
            from IPython.display import display
            import ipywidgets

            if get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None:
                self.output = ipywidgets.Output()
                display(self.output)
        except ImportError:
            pass

    def refresh(self, final: dict | None = None) -> int:
        """Draw what is known; returns the epochs done."""
        history, done = {}, 0
        if final is not None:
            history = final.get("history", {})
            done = len(history.get("loss", []))
        else:
            try:
                progress = json.loads(self.file.read_text())
                if progress["time"] >= self.since - 1:
                    history, done = progress["history"], progress["epoch"]
            except (OSError, ValueError, KeyError):
                pass
        if self.output is not None and history.get("loss"):
            self._draw(history)
        return done

    def _draw(self, history: dict) -> None:
        import matplotlib.pyplot as plt

        figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(9, 3))
        epochs = range(1, len(history["loss"]) + 1)
        for axes, names, title in ((loss, ("loss", "val_loss"), "Loss"), (accuracy, ("accuracy", "val_accuracy"), "Accuracy")):
            for name in names:
                if history.get(name):
                    axes.plot(epochs, history[name], marker="o", label=name.replace("_", " "))
            axes.set_xlabel("epoch")
            axes.set_title(title)
            axes.legend()
        figure.tight_layout()
        # As a PNG appended to the Output widget: a widget's `with output:` capture does not
        # work from the thread a panel follows its training in.
        import io

        from IPython.display import Image

        png = io.BytesIO()
        figure.savefig(png, format="png")
        plt.close(figure)
        self.output.outputs = ()  # (clear_output from a thread only marks it for clearing)
        self.output.append_display_data(Image(data=png.getvalue(), format="png"))


__all__ = ["ModelError", "ModelServer", "ResourceError", "model_servers", "serve", "stop_model"]
