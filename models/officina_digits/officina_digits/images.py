"""An uploaded picture of one digit, turned into what the network was trained on: the 8×8
grid of scikit-learn's digits data set, where 0 is background and 16 is full ink.

The convention, for pictures of any size, grayscale or colour (PNG or JPEG):
- Transparent parts count as white paper.
- The picture is one digit, framed with a small margin, as in the shipped samples: it is
  padded to a square with its background and shrunk to 8×8 by averaging.
- Ink is whatever differs from the background, which is read off the picture's border:
  dark ink on light paper (a scan, the samples) is inverted, light ink on a dark background
  (a blackboard, a screen) is taken as it is. The answer says which (`inverted`).
- Contrast is stretched so that the background is 0 and the darkest ink 16.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FORMATS = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff"}
SIDE = 8
INK_MAX = 16.0
# Pictures are shrunk to at most this side before any arithmetic: big photos cost nothing.
WORKING_SIDE = 256
# Below this ink contrast (out of 255) the picture is taken to be blank.
MIN_CONTRAST = 16.0


class NotADigitImage(ValueError):
    """The upload cannot be read as a picture of a digit; the message says why."""


def sniff(head: bytes) -> str | None:
    """The image format named by a file's first bytes ('PNG', 'JPEG'), or None."""
    for name, magic in FORMATS.items():
        if head.startswith(magic):
            return name
    return None


def to_digit_grid(path) -> tuple[np.ndarray, bool]:
    """The 8×8 float32 grid (0..16) of the picture at `path`, and whether it was inverted."""
    picture = _open(path)
    gray = _flatten_alpha(picture).convert("L")
    if max(gray.size) > WORKING_SIDE:
        gray.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float32)

    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    inverted = background > float(pixels.mean())
    ink = 255.0 - pixels if inverted else pixels
    ink_background = 255.0 - background if inverted else background

    square = _pad_to_square(ink, ink_background)
    small = np.asarray(
        Image.fromarray(square).resize((SIDE, SIDE), Image.Resampling.BOX),
        dtype=np.float32,
    )
    contrast = float(small.max()) - ink_background
    if contrast < MIN_CONTRAST:
        raise NotADigitImage("the picture is blank: no digit stands out from the background")
    grid = np.clip((small - ink_background) / contrast, 0.0, 1.0) * INK_MAX
    return grid.astype(np.float32), inverted


def _open(path) -> Image.Image:
    try:
        picture = Image.open(path)
        if picture.format not in FORMATS:
            raise NotADigitImage(f"a {picture.format} image: send a PNG or JPEG")
        picture.draft("L", (WORKING_SIDE, WORKING_SIDE))  # JPEG only: decode at a smaller scale
        picture.load()
    except NotADigitImage:
        raise
    except Image.UnidentifiedImageError:  # its message names the server's temporary file
        raise NotADigitImage("not a readable PNG or JPEG image (damaged or cut short)") from None
    except Image.DecompressionBombError as error:
        raise NotADigitImage(f"the picture is too large ({error})") from None
    except Exception as error:  # Pillow's errors for broken image data are of many types
        raise NotADigitImage(f"not a readable PNG or JPEG image ({error})") from None
    if picture.width < 1 or picture.height < 1:
        raise NotADigitImage("the picture is empty")
    return picture


def _flatten_alpha(picture: Image.Image) -> Image.Image:
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba)
    return picture


def _pad_to_square(ink: np.ndarray, fill: float) -> np.ndarray:
    height, width = ink.shape
    side = max(height, width)
    square = np.full((side, side), fill, dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = ink
    return square
