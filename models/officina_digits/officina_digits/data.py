"""The data set: scikit-learn's bundled 8×8 handwritten digits (1797 images, values 0..16,
ink high), nothing downloaded. A fixed, stratified fifth is held out and never trained on:
every run reports its accuracy on the same images, and the shipped samples come from them.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .images import INK_MAX  # noqa: F401 (the data set's scale, here for the network)

CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def split():
    """(images, labels, train_indices, test_indices); images are 8×8 in the 0..16 scale."""
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    return digits.images.astype(np.float32), digits.target, train_idx, test_idx
