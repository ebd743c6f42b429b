"""The DEEPaaS v2 entry point (`deepaas.v2.model` = `officina_digits`).

The arguments are declared once, here, as webargs fields with their validation: DEEPaaS
validates requests with them (a value out of range is a 422 naming the field, before any
work starts), publishes them in its Swagger spec, and forms can be generated from that.

DEEPaaS imports this module in its API process and calls warm, train and predict in worker
processes; TensorFlow is only imported there (officina_digits.network).
"""

from __future__ import annotations

import os
from importlib import metadata

from marshmallow import ValidationError
from webargs import fields, validate

from . import images, runs
from .errors import BadInput

NAME = "officina_digits"

# What predict answers; DEEPaaS checks every answer against it and publishes it.
schema = {
    "label": fields.Int(required=True, metadata={"description": "The predicted digit, 0 to 9."}),
    "probability": fields.Float(required=True, metadata={"description": "The predicted digit's probability."}),
    "probabilities": fields.List(
        fields.Float(), required=True,
        metadata={"description": "The probability of each digit, 0 to 9 (they sum to 1)."},
    ),
    "inverted": fields.Bool(
        required=True,
        metadata={"description": "Whether the picture was read as dark ink on light paper and inverted."},
    ),
    "pixels": fields.List(
        fields.List(fields.Float()), required=True,
        metadata={"description": "The 8×8 grid the network saw (0 background to 16 ink), rows top to bottom."},
    ),
    "run": fields.Str(required=True, metadata={"description": "The training run whose network answered."}),
}


def get_metadata() -> dict:
    latest = runs.latest_run()
    summary = None
    if latest is not None:
        m = runs.read_metrics(latest)
        summary = {key: m.get(key) for key in ("run", "origin", "finished", "test_accuracy", "val_accuracy", "args")}
    return {
        "name": NAME,
        "description": (
            "Classifies a picture of one handwritten digit (PNG or JPEG, any size, grayscale or "
            "colour) with a small Keras CNN trained on scikit-learn's bundled 8×8 digits. "
            "Retrain it with your own epochs, learning rate, batch size and validation split; "
            "each run's network and metrics are kept, and predict uses the latest."
        ),
        "author": "Officina",
        "license": "Apache-2.0",
        "version": metadata.version("officina-digits"),
        "latest_run": summary,
    }


def _bounded(kind, default, low, high, description, low_inclusive=True):
    """A field with its range checked by DEEPaaS and published in the Swagger spec (apispec
    publishes Range's bounds, but not that a bound is exclusive: that is added here)."""
    bounds = {} if low_inclusive else {"exclusiveMinimum": True}
    return kind(
        load_default=default,
        validate=validate.Range(min=low, max=high, min_inclusive=low_inclusive),
        metadata={"description": description, **bounds},
    )


def get_train_args() -> dict:
    # Fresh field objects on every call: DEEPaaS binds them into schemas of its own.
    return {
        "epochs": _bounded(fields.Int, 5, 1, 50, "Passes over the training images (1 to 50)."),
        "learning_rate": _bounded(
            fields.Float, 0.01, 0, 1, "Adam's learning rate (above 0, at most 1).", low_inclusive=False
        ),
        "batch_size": _bounded(fields.Int, 32, 1, 1024, "Images per gradient step (1 to 1024)."),
        "validation_split": _bounded(
            fields.Float, 0.2, 0, 0.5,
            "Fraction of the training images kept aside to validate each epoch (0 to 0.5).",
        ),
        "seed": _bounded(
            fields.Int, 0, 0, 2**31 - 1, "Random seed: the same arguments and seed give the same network."
        ),
    }


def train_defaults() -> dict:
    return {name: field.load_default for name, field in get_train_args().items()}


def _png_or_jpeg_upload(value) -> bool:
    """Runs in the API process while DEEPaaS parses the request: a wrong upload is answered
    at once (422, naming the field) without a trip to a worker."""
    upload = getattr(value, "file", None)
    if upload is None:
        raise ValidationError("Send the picture as a file upload (multipart/form-data), not as text.")
    head = upload.read(16)
    upload.seek(0)
    if images.sniff(head) is None:
        raise ValidationError(
            f"{value.filename!r} ({value.content_type}) is not a PNG or JPEG image."
        )
    return True


def get_predict_args() -> dict:
    return {
        "image": fields.Raw(
            required=True, validate=_png_or_jpeg_upload,
            metadata={
                "type": "file",
                "location": "form",
                "description": (
                    "A picture of one digit: PNG or JPEG, any size, grayscale or colour. Dark "
                    "ink on light paper or light on dark both work (see the answer's "
                    "'inverted'); frame the digit with a small margin."
                ),
            },
        ),
    }


def warm() -> None:
    from . import network

    network.ensure_trained()


def train(**args) -> dict:
    from . import network

    return network.train(**args)


def predict(**args) -> dict:
    upload = args["image"]  # deepaas.model.v2.wrapper.UploadedFile: a temporary copy
    try:
        grid, inverted = images.to_digit_grid(upload.filename)
    except images.NotADigitImage as error:
        raise BadInput(f"{upload.original_filename}: {error}") from None
    finally:
        # DEEPaaS leaves its temporary copy of each upload behind.
        try:
            os.unlink(upload.filename)
        except OSError:
            pass

    from . import network

    run, model = network.latest_model()
    probabilities = network.probabilities(model, grid)
    label = int(probabilities.argmax())
    return {
        "label": label,
        "probability": float(probabilities[label]),
        "probabilities": [float(p) for p in probabilities],
        "inverted": bool(inverted),
        "pixels": [[round(float(v), 2) for v in row] for row in grid],
        "run": run.name,
    }
