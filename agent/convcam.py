"""The Convcam: every kernel of the last conv layer's output, tiled into one grey picture.

The seed's stream showed what the network "looks at" this way. The feature map (H x W x C, from
the same forward pass as the driving prediction: `Predictor(..., convcam=True)`) becomes C tiles
of H x W pixels, row by row, in a grid as close to square as possible (C = 1536 for model_0005:
39 rows of 40; 64 for pilotnet_small: 8 x 8), one pixel of black between tiles.

Brightness is one scale for the whole picture (0 and below black, the 99th percentile of the
map and above white), so a kernel that hardly responds stays dark instead of being stretched
into noise, and tiles can be compared with each other.
"""

from __future__ import annotations

import math

import numpy as np

GAP = 1
"""Black pixels between tiles."""


def grid(channels: int) -> tuple[int, int]:
    """(rows, columns) of the tile grid for `channels` kernels: columns = ceil(sqrt(C))."""
    if channels < 1:
        raise ValueError(f"a feature map needs at least one channel, not {channels}")
    columns = math.ceil(math.sqrt(channels))
    return math.ceil(channels / columns), columns


def tile(feature_map: np.ndarray, scale: int = 1) -> np.ndarray:
    """The Convcam picture (uint8, grey) of one H x W x C feature map; each tile pixel is
    `scale` x `scale` screen pixels."""
    if feature_map.ndim != 3:
        raise ValueError(f"a feature map is H x W x C, not of shape {feature_map.shape}")
    height, width, channels = feature_map.shape
    rows, columns = grid(channels)
    levels = _levels(feature_map)
    tile_h, tile_w = height * scale + GAP, width * scale + GAP
    picture = np.zeros((rows * tile_h - GAP, columns * tile_w - GAP), dtype=np.uint8)
    for channel in range(channels):
        row, column = divmod(channel, columns)
        cells = np.kron(levels[:, :, channel], np.ones((scale, scale), dtype=np.uint8))
        top, left = row * tile_h, column * tile_w
        picture[top : top + height * scale, left : left + width * scale] = cells
    return picture


def _levels(feature_map: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(feature_map.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(values, 99))
    if top <= 0.0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(values / top * 255.0, 0.0, 255.0).astype(np.uint8)
