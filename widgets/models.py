"""Model widgets: train a served DEEPaaS model, and ask it for predictions.

Both are generated from the server's own Swagger spec (the model's declaration of its train
and predict arguments, with their ranges), so the form offers what the server accepts; what it
refuses anyway is shown in its own words.

    TrainPanel(server)     arguments form, Start, progress bar, live loss/accuracy, Cancel
    PredictPanel()         choose a served model (yours or shared with you), upload a picture,
                           see the class probabilities as a chart (a Voila app for basic users)
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as widgets

from officina.lab.models import ModelError, ModelServer, model_servers

_ERROR, _OK = "color:#cf222e", "color:#1a7f37"


def _say(target: widgets.HTML, text: str, ok: bool = True) -> None:
    target.value = f'<span style="{_OK if ok else _ERROR}">{html.escape(text)}</span>'


def argument_field(name: str, spec: dict) -> widgets.Widget:
    """A form field for one Swagger parameter (numbers with their bounds, text otherwise)."""
    style, layout = {"description_width": "initial"}, {"width": "260px"}
    label = name.replace("_", " ")
    kind = spec.get("type")
    if kind in ("integer", "number"):
        cls = widgets.BoundedIntText if kind == "integer" else widgets.BoundedFloatText
        low = spec.get("minimum", -1e12)
        high = spec.get("maximum", 1e12)
        default = spec.get("default", low if low > -1e12 else 0)
        field = cls(value=default, min=low, max=high, description=label, style=style, layout=layout)
        if kind == "number":
            field.step = (high - low) / 100 if high < 1e12 and low > -1e12 else 0.01
        return field
    if kind == "boolean":
        return widgets.Checkbox(value=bool(spec.get("default", False)), description=label)
    if spec.get("enum"):
        return widgets.Dropdown(options=spec["enum"], value=spec.get("default", spec["enum"][0]), description=label,
                                style=style, layout=layout)
    return widgets.Text(value=str(spec.get("default", "")), description=label, style=style, layout=layout)


class TrainPanel(widgets.VBox):
    """Train a served model: its declared train arguments, Start, a progress bar, the loss and
    accuracy per epoch (for the model's owner), Cancel; the result when it is done."""

    def __init__(self, server: ModelServer, poll: float = 0.5, **kwargs):
        self.server = server
        self.poll = poll
        self.fields = {name: argument_field(name, spec) for name, spec in server.arguments("train").items()}
        self.start_button = widgets.Button(description="Start training", icon="play", button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.start_button.on_click(lambda _: self.start())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.progress = widgets.IntProgress(min=0, max=1, description="Epochs")
        self.note = widgets.HTML()
        self.plot = widgets.Output()
        self.uuid: str | None = None
        self.result: dict | None = None
        self._thread: threading.Thread | None = None
        self._cancelled = False
        super().__init__(children=[
            widgets.HTML(f"<h3>Train {html.escape(server.model)}</h3>"),
            widgets.VBox(list(self.fields.values())),
            widgets.HBox([self.start_button, self.cancel_button]),
            widgets.HBox([self.progress, self.note]),
            self.plot,
        ], **kwargs)

    def start(self) -> bool:
        args = {name: field.value for name, field in self.fields.items()}
        try:
            started = self.server.start_training(**args)
        except ModelError as exc:  # the model's own check, in its words
            _say(self.note, f"Not started: {exc}", ok=False)
            return False
        self.uuid, self.result, self._cancelled = started["uuid"], None, False
        self.progress.max, self.progress.value = int(args.get("epochs") or 1), 0
        self.start_button.disabled, self.cancel_button.disabled = True, False
        self.note.value = f"Training {self.uuid}…"
        self._thread = threading.Thread(target=self._follow, args=(self.uuid,), daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout: float = 600) -> dict | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    def cancel(self) -> None:
        if self.uuid:
            self._cancelled = True
            try:
                self.server.cancel_training(self.uuid)
                _say(self.note, f"Cancelled {self.uuid}", ok=False)
            except ModelError as exc:
                _say(self.note, f"Cancelling: {exc}", ok=False)

    def _follow(self, uuid: str) -> None:
        from officina.lab.models import _LivePlot

        live = _LivePlot(self.server.model)
        live.output = self.plot
        try:
            while True:
                status = self.server.training(uuid)
                self.progress.value = min(live.refresh(), self.progress.max)
                if status.get("status") not in ("running", "pending", None):
                    break
                time.sleep(self.poll)
            if status["status"] == "done":
                output = status.get("result", {}).get("output", {})
                live.refresh(final=output)
                self.progress.value = self.progress.max
                self.result = status
                accuracy = output.get("test_accuracy", output.get("accuracy"))
                _say(self.note, f"Done: {uuid}" + (f", accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""))
            elif self._cancelled:
                _say(self.note, f"Cancelled {uuid}", ok=False)
            else:
                _say(self.note, f"Training {status['status']}: {status.get('message', '')}", ok=False)
        except ModelError as exc:
            # DEEPaaS forgets a cancelled training: its status then answers 404.
            _say(self.note, f"Cancelled {uuid}" if self._cancelled else f"Training: {exc}", ok=False)
        finally:
            self.start_button.disabled, self.cancel_button.disabled = False, True


class PredictPanel(widgets.VBox):
    """Ask a served model about a picture: the servers you may call, an upload, Predict, and the
    answer as a chart of class probabilities."""

    def __init__(self, server: ModelServer | None = None, **kwargs):
        self.servers: dict[str, ModelServer] = {}
        self.choice = widgets.Dropdown(description="Model", style={"description_width": "initial"},
                                       layout={"width": "420px"})
        self.upload = widgets.FileUpload(accept="image/png,image/jpeg", multiple=False, description="Picture")
        self.predict_button = widgets.Button(description="Predict", icon="magic", button_style="primary")
        self.predict_button.on_click(lambda _: self.predict())
        self.answer = widgets.HTML()
        self.chart = widgets.Output()
        self.answer_data: dict | None = None
        super().__init__(children=[
            widgets.HTML("<h3>Ask a model</h3>"), self.choice, self.upload, self.predict_button, self.answer, self.chart,
        ], **kwargs)
        if server is not None:
            self.servers = {f"{server.model} ({server.id})": server}
            self.choice.options = list(self.servers)
            self.choice.value = self.choice.options[0]
        else:
            self.refresh()

    def refresh(self) -> None:
        try:
            records = model_servers()
        except Exception as exc:  # no resource manager here, or it refused: say so
            _say(self.answer, f"Cannot list model servers: {exc}", ok=False)
            return
        self.servers = {f"{r['model']} of {r['owner']} ({r['id']})": ModelServer(r) for r in records}
        self.choice.options = list(self.servers) or ["(no model server is running for you)"]
        self.choice.value = self.choice.options[0]  # shown selected: selected for the kernel too

    def predict(self) -> dict | None:
        server = self.servers.get(self.choice.value)
        if server is None:
            _say(self.answer, "Choose a running model server first.", ok=False)
            return None
        if not self.upload.value:
            _say(self.answer, "Upload a picture first (PNG or JPEG).", ok=False)
            return None
        upload = self.upload.value[0]
        try:
            data = server.predict(bytes(upload["content"]), upload["name"])
        except ModelError as exc:
            _say(self.answer, f"The model refused it: {exc}", ok=False)
            return None
        self.answer_data = data
        label = data.get("label")
        probability = data.get("probability")
        text = f"Predicted digit: {label}" + (f" ({probability:.0%})" if isinstance(probability, float) else "")
        _say(self.answer, text)
        if data.get("probabilities"):
            self._chart(data["probabilities"], label)
        return data

    def _chart(self, probabilities: list[float], label) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        figure, axes = plt.subplots(figsize=(6, 2.5))
        colours = ["tab:red" if i == label else "tab:blue" for i in range(len(probabilities))]
        axes.bar(range(len(probabilities)), probabilities, color=colours)
        axes.set_xticks(range(len(probabilities)))
        axes.set_ylim(0, 1)
        axes.set_xlabel("class")
        axes.set_ylabel("probability")
        figure.tight_layout()
        with self.chart:
            self.chart.clear_output(wait=True)
            display(figure)
        plt.close(figure)
