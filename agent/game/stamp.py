"""A frame number drawn into the picture, to measure which frame a capture really got.

Sixteen 8x8-pixel cells along the top-left edge, one bit each (white = 1), least significant
first. Only `--stamp` games draw it (it would be noise in training data); `charles bench
pairing` reads it back from captured frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the reader runs in the drive, which never imports pygame
    import pygame

BITS = 16
CELL = 8


def draw_stamp(surface: pygame.Surface, number: int) -> None:
    for bit in range(BITS):
        colour = (255, 255, 255) if number >> bit & 1 else (0, 0, 0)
        surface.fill(colour, (bit * CELL, 0, CELL, CELL))


def read_stamp(image: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> int:
    """The number in a captured frame (uint8, RGB, BGR or BGRA, top-left at [0, 0]).

    `scale` (x, y): how much the picture was resized since the game drew it (the stream
    layout shows a 1280x720 game in 880x495: 0.6875 each way); each cell is read at its
    centre."""
    centre = CELL / 2
    row = int(centre * scale[1])
    number = 0
    for bit in range(BITS):
        if int(image[row, int((bit * CELL + centre) * scale[0]), 1]) > 127:
            number |= 1 << bit
    return number
