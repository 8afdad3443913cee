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
    if scale > 1:
        levels = levels.repeat(scale, axis=0).repeat(scale, axis=1)
    # One array operation instead of a loop over kernels (1,536 of them for model_0005, drawn
    # live while recording): channels -> a (rows, columns) grid of tiles with a black gap
    # right of and below each, then the tiles laid side by side, row by row.
    tiles = np.zeros((rows * columns, height * scale + GAP, width * scale + GAP), np.uint8)
    tiles[:channels, : height * scale, : width * scale] = levels.transpose(2, 0, 1)
    tile_h, tile_w = tiles.shape[1:]
    picture = tiles.reshape(rows, columns, tile_h, tile_w).transpose(0, 2, 1, 3)
    return picture.reshape(rows * tile_h, columns * tile_w)[
        : rows * tile_h - GAP, : columns * tile_w - GAP
    ]


def _levels(feature_map: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(feature_map.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(values, 99))
    if top <= 0.0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(values / top * 255.0, 0.0, 255.0).astype(np.uint8)
