"""Frame -> model input: the one transform shared by driving, data collection and training.

Whatever the model saw while driving must be exactly what it was trained on, so every path
calls `preprocess` and nothing else.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

Order = Literal["bgra", "rgb"]

_CHANNELS = {"bgra": 4, "rgb": 3}


def preprocess(
    image: np.ndarray,
    capture_size: tuple[int, ...],
    crop: tuple[int, ...],
    input_size: tuple[int, ...],
    *,
    order: Order = "bgra",
) -> np.ndarray:
    """Turn a captured picture into the model's input image.

    image: uint8 (height, width, channels). `order="bgra"` (default): 4 channels as mss
        captures them; `order="rgb"`: 3 channels already converted (stored samples).
    capture_size: (width, height) in pixels the game renders at; `crop` is measured on a
        frame of this size. A frame of another size (a resized window) is treated as this
        size scaled, so the crop removes the same part of the picture.
    crop: (top, right, bottom, left) pixels removed from a frame of `capture_size`.
    input_size: (width, height) of the model's input.

    Returns a new, C-contiguous uint8 RGB array of shape (input height, input width, 3).
    The result equals scaling to `capture_size`, cropping, then resizing with INTER_AREA, but
    is done as one crop of the source, one colour conversion and one resize (a resized frame's
    crop edges are rounded to whole source pixels).

    Raises ValueError for arguments no caller should pass (a bug, not a config mistake: config
    values are validated when the config is loaded).
    """
    channels = _CHANNELS.get(order)
    if channels is None:
        raise ValueError(f"order must be 'bgra' or 'rgb', got {order!r}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(
            f"expected a uint8 {order.upper()} image of shape (height, width, {channels}), "
            f"got {image.dtype} {image.shape}"
        )
    top, right, bottom, left = _crop_box(image.shape[1], image.shape[0], capture_size, crop)
    kept = image[top:bottom, left:right]  # a view: no pixels copied yet
    width, height = _size(input_size, "input_size")
    # Convert first: dropping alpha at full size costs ~0.1 ms and makes INTER_AREA (the
    # expensive step) work on 3 channels instead of 4 (measured faster than resizing first).
    rgb = cv2.cvtColor(kept, cv2.COLOR_BGRA2RGB) if order == "bgra" else kept
    if rgb.shape[1] != width or rgb.shape[0] != height:
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return rgb if rgb is not kept else kept.copy(order="C")


def _crop_box(
    frame_width: int, frame_height: int, capture_size: tuple[int, ...], crop: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """(top, right, bottom, left) edges of the kept part, in pixels of the actual frame."""
    capture_width, capture_height = _size(capture_size, "capture_size")
    if len(crop) != 4 or min(crop) < 0:
        raise ValueError(f"crop must be 4 pixel counts >= 0 (top, right, bottom, left), got {crop}")
    top, right, bottom, left = crop
    if left + right >= capture_width or top + bottom >= capture_height:
        raise ValueError(
            f"crop {tuple(crop)} leaves nothing of a {capture_width}x{capture_height} frame"
        )
    sx = frame_width / capture_width
    sy = frame_height / capture_height
    kept_top, kept_bottom = round(top * sy), round((capture_height - bottom) * sy)
    kept_left, kept_right = round(left * sx), round((capture_width - right) * sx)
    if kept_bottom <= kept_top or kept_right <= kept_left:
        raise ValueError(
            f"crop {tuple(crop)} leaves nothing of a {frame_width}x{frame_height} frame"
        )
    return kept_top, kept_right, kept_bottom, kept_left


def _size(size: tuple[int, ...], name: str) -> tuple[int, int]:
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{name} must be (width, height) in pixels, got {size}")
    return int(size[0]), int(size[1])
