"""Writes the shipped sample pictures: for each digit, the first image of the held-out test
split (never trained on), as a 64×64 PNG of dark ink on white paper, named <digit>-<index
in the data set>.png. The files are committed; run again only to remake them:

    python -m officina_digits.make_samples [FOLDER]      (default: the package's samples/)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import data, samples_dir

SCALE = 8  # each of the 8×8 cells becomes 8×8 pixels


def main(argv: list[str]) -> None:
    folder = Path(argv[0]) if argv else samples_dir()
    folder.mkdir(parents=True, exist_ok=True)
    images, labels, _, test_idx = data.split()
    for digit in range(data.CLASSES):
        index = int(next(i for i in test_idx if labels[i] == digit))
        paper = np.rint(255 - images[index] * (255 / data.INK_MAX)).astype(np.uint8)
        picture = Image.fromarray(paper).resize((8 * SCALE, 8 * SCALE), Image.Resampling.NEAREST)
        path = folder / f"{digit}-{index}.png"
        picture.save(path, optimize=True)
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
