"""Sample shards: the files collectors publish into a data folder and the trainer reads.

A shard is an `.npz` file (numpy's zip of `.npy` arrays) of N samples:

    frames    uint8   (N, H, W, 3)  RGB frames, H x W x 3 = the model line's input shape
    throttle  float32 (N,)          accelerate - brake, in [-1, 1]
    steering  float32 (N,)          in [-1, 1]
    speed     float32 (N,)          NaN when unknown
    time      float64 (N,)          unix seconds
    sets      bool    (N, 2)        membership in each output's balanced set (OUTPUT_NAMES order)
    meta      0-d unicode string    JSON {"format": "charles-shard", "version": 1, "source",
                                    "input_shape", "writer"}

Published shards are named `shard-*.npz` (agent.learn.shard_writer). The data folder is shared,
so a shard is untrusted input: it is opened with agent.learn.npz_reader, its arrays' names,
dtypes and shapes (against the model line's input shape) are checked from their headers, at
most MAX_SHARD_DATA_BYTES (256 MiB) together, before anything is inflated, and every label
after. A damaged or hostile file is one `ShardError` line, never the trainer's memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import CharlesError, one_line, quoted
from agent.files import FileRefused
from agent.learn.npz_reader import ArrayHeader, open_npz
from agent.nets.registry import OUTPUT_NAMES

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".npz"
MAX_SHARD_DATA_BYTES = 256 * 1024**2
"""Bytes a shard's arrays may unpack to, together: a shard declaring more is refused from its
headers, before anything is inflated. The default 500 samples of the largest line (model_0005,
480x270) are 185 MiB; a writer starts a new shard before reaching this."""
MAX_SHARD_BYTES = MAX_SHARD_DATA_BYTES + 1024**2
"""A bigger shard file is refused without being read (zip bookkeeping is far below 1 MiB)."""
SHARD_FORMAT = "charles-shard"
SHARD_VERSION = 1
_META_LIMIT = 64 * 1024
"""Characters; a shard's meta JSON is a few hundred."""
_SHARD_ENTRIES = 16
"""Zip entries a shard may list: its 7 arrays, and room to name a few unknown ones."""
_SHARD_OVERHEAD = 4 * _META_LIMIT + 64 * 1024
"""Bytes of a shard that are not samples, at most: meta (4 bytes a character) and headers."""

SHARD_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "frames": (np.dtype(np.uint8), 4),
    "throttle": (np.dtype(np.float32), 1),
    "steering": (np.dtype(np.float32), 1),
    "speed": (np.dtype(np.float32), 1),
    "time": (np.dtype(np.float64), 1),
    "sets": (np.dtype(np.bool_), 2),
}
"""Every array of a shard but meta: its dtype and number of dimensions."""


class ShardError(CharlesError):
    """A data folder or shard that cannot be used; the message names it and the fix."""


@dataclass(frozen=True, eq=False)
class Shard:
    """One shard file's samples, checked (see the module docstring for the arrays)."""

    path: Path
    frames: np.ndarray
    throttle: np.ndarray
    steering: np.ndarray
    speed: np.ndarray
    time: np.ndarray
    sets: np.ndarray
    source: str
    """What produced the samples (the collector's source, e.g. "autopilot")."""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def labels(self) -> np.ndarray:
        """(N, 2) float32: every sample's outputs in OUTPUT_NAMES order."""
        columns = {"throttle": self.throttle, "steering": self.steering}
        return np.stack([columns[name] for name in OUTPUT_NAMES], axis=1).astype(np.float32)


def is_shard_name(name: str) -> bool:
    """Whether a file name in a data folder is a published shard (not a temporary file)."""
    return name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX)


def read_shard(path: Path, input_shape: tuple[int, int, int]) -> Shard:
    """Read and check the shard `path` for a model taking frames of `input_shape`.

    Raises `ShardError` with one line naming the file and what is wrong with it; see the
    module docstring for what a shard must hold.
    """
    height, width, _ = input_shape
    try:
        with open_npz(path, MAX_SHARD_BYTES, MAX_SHARD_DATA_BYTES, _SHARD_ENTRIES) as archive:
            _check_layout(path, archive.headers, (height, width))
            arrays = {name: archive.read(name) for name in (*SHARD_ARRAYS, "meta")}
    except FileRefused as error:
        raise _bad_shard(path, str(error)) from None
    meta = _read_meta(path, arrays["meta"])
    if tuple(meta["input_shape"]) != arrays["frames"].shape[1:]:
        raise _bad_shard(
            path, f"its meta says input_shape {meta['input_shape']} but it holds other frames"
        )
    for name in ("throttle", "steering"):
        values = arrays[name]
        if not np.isfinite(values).all():
            raise _bad_shard(path, f"its {name} labels include NaN or infinity")
        if (np.abs(values) > 1.0).any():
            outside = values[np.abs(values) > 1.0][0]
            raise _bad_shard(path, f"its {name} labels leave [-1, 1] (e.g. {outside:g})")
    if np.isinf(arrays["speed"]).any():
        raise _bad_shard(path, "its speeds include infinity")
    if not np.isfinite(arrays["time"]).all():
        raise _bad_shard(path, "its times include NaN or infinity")
    return Shard(
        path=path,
        frames=arrays["frames"],
        throttle=arrays["throttle"],
        steering=arrays["steering"],
        speed=arrays["speed"],
        time=arrays["time"],
        sets=arrays["sets"],
        source=meta["source"],
    )


def _check_layout(path: Path, headers: dict[str, ArrayHeader], frame_size: tuple[int, int]) -> None:
    """Check the arrays' names, dtypes and shapes from their headers, before reading them."""
    expected = {*SHARD_ARRAYS, "meta"}
    missing = sorted(expected - headers.keys())
    if missing:
        raise _bad_shard(path, f"it lacks the arrays {', '.join(missing)}")
    extra = sorted(headers.keys() - expected)
    if extra:
        raise _bad_shard(path, f"it holds unknown arrays {quoted(', '.join(extra))}")
    for name, (dtype, ndim) in SHARD_ARRAYS.items():
        header = headers[name]
        if header.dtype != dtype or len(header.shape) != ndim:
            raise _bad_shard(
                path,
                f"its {name} is {header.dtype} {header.shape}, not {ndim}-D {dtype}",
            )
    meta = headers["meta"]
    if meta.dtype.kind != "U" or meta.shape != () or meta.dtype.itemsize > 4 * _META_LIMIT:
        raise _bad_shard(path, "its meta is not a short text")
    frames = headers["frames"].shape
    if frames[3] != 3:
        raise _bad_shard(path, f"its frames have {frames[3]} channels, not 3 (RGB)")
    if frames[1:3] != frame_size:
        raise ShardError(
            f"shard {path} holds {frames[1]}x{frames[2]} frames but the model line takes "
            f"{frame_size[0]}x{frame_size[1]}; collect data for this model line, or set "
            "data.folder to a data folder collected for it"
        )
    if headers["sets"].shape[1:] != (len(OUTPUT_NAMES),):
        raise _bad_shard(path, f"its sets are not one column per output ({len(OUTPUT_NAMES)})")
    lengths = {name: headers[name].shape[0] for name in SHARD_ARRAYS}
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise _bad_shard(path, f"its arrays differ in length ({shown})")
    if lengths["frames"] == 0:
        raise _bad_shard(path, "it holds no samples")


def _read_meta(path: Path, meta: np.ndarray) -> dict[str, Any]:
    try:
        data = json.loads(str(meta[()]))
    except (ValueError, RecursionError) as error:
        raise _bad_shard(path, f"its meta is not JSON ({one_line(error, 60)})") from None
    if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
        raise _bad_shard(path, f"it is not a {SHARD_FORMAT} file")
    if data.get("version") != SHARD_VERSION:
        raise _bad_shard(
            path, f"it is {SHARD_FORMAT} version {quoted(data.get('version'))}, not {SHARD_VERSION}"
        )
    shape, source = data.get("input_shape"), data.get("source")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise _bad_shard(path, f"its meta input_shape {quoted(shape)} is not [H, W, 3]")
    if not isinstance(source, str) or not isinstance(data.get("writer"), str):
        raise _bad_shard(path, "its meta source and writer must be text")
    return data


def _bad_shard(path: Path, problem: str) -> ShardError:
    return ShardError(
        f"shard {path} cannot be used: {problem}; delete it or move it out of the data folder"
    )


def shard_samples_limit(input_shape: tuple[int, int, int]) -> int:
    """The most samples of `input_shape` one shard may hold within MAX_SHARD_DATA_BYTES."""
    per_sample = math.prod(input_shape) + sum(
        dtype.itemsize * (len(OUTPUT_NAMES) if ndim == 2 else 1)
        for name, (dtype, ndim) in SHARD_ARRAYS.items()
        if name != "frames"
    )
    return (MAX_SHARD_DATA_BYTES - _SHARD_OVERHEAD) // per_sample


def check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """`input_shape` as a tuple of ints; ValueError unless it is (height, width, 3)."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (height, width, 3), not {input_shape!r}")
    return shape  # type: ignore[return-value]
