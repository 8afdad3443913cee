"""Drawing primitives for video pictures (BGR uint8, drawn in place with OpenCV).

Shared by the live HUD, the stream layout and `charles makemovie`, so a value looks the same
wherever it is shown: a pedal is a bar filling from the left, the steering a bar growing from
the centre to the side it steers to.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX

WHITE = (255, 255, 255)
GREY = (150, 150, 150)
TRACK = (60, 60, 60)
"""An empty bar's background."""
GREEN = (60, 200, 60)
"""Accelerate."""
RED = (50, 50, 230)
"""Brake."""
BLUE = (230, 160, 40)
"""Steering."""
YELLOW = (40, 220, 240)
"""Markers (a checkpoint swapped in)."""
ORANGE = (30, 140, 255)
"""A second value beside the first (makemovie: predicted beside recorded)."""


def text(
    picture: np.ndarray,
    words: str,
    left: int,
    baseline: int,
    scale: float,
    colour: tuple[int, int, int] = WHITE,
) -> None:
    """`words` with its baseline at (left, baseline); `scale` 1.0 is about 22 pixels tall."""
    thickness = max(1, round(scale * 1.6))
    cv2.putText(picture, words, (left, baseline), FONT, scale, colour, thickness, cv2.LINE_AA)


def shade(picture: np.ndarray, left: int, top: int, width: int, height: int, alpha: float) -> None:
    """Darken a rectangle to `alpha` of its brightness, so text on it reads over any scene."""
    box = picture[max(0, top) : top + height, max(0, left) : left + width]
    # OpenCV's saturating scale: ~15x faster than NumPy's float round trip (drawn 30 times a s).
    box[:] = cv2.convertScaleAbs(box, alpha=alpha)


def fill_fraction(value: float) -> float:
    """A value in [0, 1] for a bar; NaN (a broken prediction) shows as an empty bar."""
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def bar(
    picture: np.ndarray,
    value: float,
    left: int,
    top: int,
    width: int,
    height: int,
    colour: tuple[int, int, int],
) -> None:
    """A pedal-like bar: `value` in [0, 1] fills it from the left."""
    cv2.rectangle(picture, (left, top), (left + width - 1, top + height - 1), TRACK, -1)
    filled = round(fill_fraction(value) * width)
    if filled > 0:
        cv2.rectangle(picture, (left, top), (left + filled - 1, top + height - 1), colour, -1)


def centred_bar(
    picture: np.ndarray,
    value: float,
    left: int,
    top: int,
    width: int,
    height: int,
    colour: tuple[int, int, int],
) -> None:
    """A stick-like bar: `value` in [-1, 1] grows from the centre towards its side."""
    cv2.rectangle(picture, (left, top), (left + width - 1, top + height - 1), TRACK, -1)
    centre = left + width // 2
    reach = round(min(1.0, abs(value)) * (width // 2)) if math.isfinite(value) else 0
    if reach > 0:
        start, end = (centre, centre + reach) if value > 0 else (centre - reach, centre)
        cv2.rectangle(picture, (start, top), (end - 1, top + height - 1), colour, -1)
    cv2.line(picture, (centre, top), (centre, top + height - 1), WHITE, 1)


def fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` (BGR, or grey) scaled to fit inside width x height keeping its aspect, as BGR."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    source_h, source_w = image.shape[:2]
    factor = min(width / source_w, height / source_h)
    fit_w, fit_h = max(1, int(source_w * factor)), max(1, int(source_h * factor))
    # Enlarged by nearest neighbour (model inputs and Convcam tiles shown as the pixels they
    # are); shrunk by area averaging, so every tile still counts.
    method = cv2.INTER_NEAREST if factor >= 1 else cv2.INTER_AREA
    return cv2.resize(image, (fit_w, fit_h), interpolation=method)


def place(
    picture: np.ndarray, fitted: np.ndarray, left: int, top: int, width: int, height: int
) -> None:
    """A picture made by `fit` for this box, centred in it."""
    fit_h, fit_w = fitted.shape[:2]
    x, y = left + (width - fit_w) // 2, top + (height - fit_h) // 2
    picture[y : y + fit_h, x : x + fit_w] = fitted


def paste(
    picture: np.ndarray, image: np.ndarray, left: int, top: int, width: int, height: int
) -> None:
    """`image` scaled to fit inside the box keeping its aspect, centred in it."""
    place(picture, fit(image, width, height), left, top, width, height)
