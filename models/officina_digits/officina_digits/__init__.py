"""Officina's example DEEPaaS model: a small Keras CNN on scikit-learn's bundled 8×8 digits.

The DEEPaaS entry point is officina_digits.api; the shipped sample pictures are in
samples_dir()."""

from pathlib import Path


def samples_dir() -> Path:
    return Path(__file__).resolve().parent / "samples"
