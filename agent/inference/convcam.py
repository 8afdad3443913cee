"""The Convcam: every kernel of the last conv layer's output, tiled into one grey picture.

The seed's stream showed what the network "looks at" this way. The feature map (H x W x C, from
the same forward pass as the driving prediction: `Predictor(..., convcam=True)`) becomes C tiles
of H x W pixels, row by row, in a grid as close to square as possible (C = 1536 for model_0005:
39 rows of 40; 64 for pilotnet_small: 8 x 8), one pixel of black between tiles.

Brightness is one scale for the whole picture (0 and below black, the 99th percentile of the
map and above white), so a kernel that hardly responds stays dark instead of being stretched
into noise, and tiles can be compared with each other.

`read_picture` reads the picture `charles convcam` is given: a PNG or JPEG whose size, read
from its header, is checked before anything is decoded.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from agent.errors import CharlesError

GAP = 1
"""Black pixels between tiles."""
MAX_PICTURE_PIXELS = 7680 * 4320
"""An 8K screenshot (about 100 MB decoded); a picture whose header claims more is refused
before it is decoded."""
MAX_PICTURE_BYTES = 256 * 1024**2
"""A larger picture file is refused before it is read."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""JPEG start-of-frame markers (the segment that holds the size); C4, C8, CC are not frames."""
_JPEG_SEGMENTS = 1000
"""Segments looked through for the frame header (a camera's JPEG has about ten before it)."""


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


# --- reading the picture ---------------------------------------------------------------------


def read_picture(path: Path) -> np.ndarray:
    """The PNG or JPEG picture `path` as a BGR uint8 array (OpenCV's order).

    CharlesError, one line, for anything but a readable regular file of at most
    MAX_PICTURE_BYTES that is a PNG or JPEG of at most MAX_PICTURE_PIXELS: the size comes from
    the file's header and is checked before the picture is decoded, so a header claiming
    100000 x 100000 pixels costs nothing.
    """
    import cv2

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise CharlesError(f"cannot read {path} ({error.strerror}); give a PNG or JPEG") from None
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CharlesError(f"{path} is not a file; give a PNG or JPEG")
        if info.st_size > MAX_PICTURE_BYTES:
            raise CharlesError(
                f"{path} is {info.st_size} bytes, more than the {MAX_PICTURE_BYTES} a picture "
                "may have; give a screenshot of the game"
            )
        try:
            size = _picture_size(stream)
            if size is None:
                raise CharlesError(f"{path} is not a picture Charles reads; give a PNG or JPEG")
            width, height = size
            if width * height > MAX_PICTURE_PIXELS:
                raise CharlesError(
                    f"{path} is {width}x{height} pixels, more than the {MAX_PICTURE_PIXELS} a "
                    "picture may have (7680x4320); give a smaller screenshot of the game"
                )
            stream.seek(0)
            data = np.frombuffer(stream.read(MAX_PICTURE_BYTES), dtype=np.uint8)
        except OSError as error:
            raise CharlesError(f"cannot read {path} ({error.strerror})") from None
    try:
        picture = cv2.imdecode(data, cv2.IMREAD_COLOR) if width and height else None
    except cv2.error:
        picture = None
    if picture is None:
        raise CharlesError(f"{path} is not a picture OpenCV can read; give a PNG or JPEG")
    return picture


def _picture_size(stream: BinaryIO) -> tuple[int, int] | None:
    """(width, height) from a PNG's or JPEG's header, (0, 0) when a header is damaged; None
    for any other file."""
    start = stream.read(24)
    if start.startswith(_PNG_SIGNATURE) and start[12:16] == b"IHDR":
        width, height = struct.unpack(">II", start[16:24])
        return width, height
    if start.startswith(b"\xff\xd8"):
        return _jpeg_size(stream)
    return None


def _jpeg_size(stream: BinaryIO) -> tuple[int, int]:
    """The size in a JPEG's start-of-frame segment, found by skipping the segments before."""
    stream.seek(2)
    for _ in range(_JPEG_SEGMENTS):
        marker = stream.read(2)
        while len(marker) == 2 and marker[1] == 0xFF:  # fill bytes before a marker
            marker = marker[1:] + stream.read(1)
        if len(marker) < 2 or marker[0] != 0xFF or marker[1] == 0xDA:
            return 0, 0  # damaged, or image data before any frame header: no size
        if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD7:
            continue  # markers without a segment
        segment = stream.read(2)
        if len(segment) < 2:
            return 0, 0
        (length,) = struct.unpack(">H", segment)
        if length < 2:
            return 0, 0
        if marker[1] in _JPEG_FRAMES:
            frame = stream.read(5)
            if len(frame) < 5:
                return 0, 0
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        stream.seek(length - 2, os.SEEK_CUR)
    return 0, 0
