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

Several collectors, on this machine or others, may write into one shared folder with no
coordination beyond names: a shard's name holds its writer's host, process id, time and a
sequence number. A shard is written under a hidden temporary name and renamed into place, so
a reader polling the folder never sees half of one. The folder is shared, so a shard is
untrusted input: nothing in it is executed or unpickled (`allow_pickle=False`), a link is never
followed, and every size is checked against the file's own headers before anything is
unpacked, so a damaged or hostile file costs a warning, never the trainer's memory.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import re
import secrets
import socket
import stat
import threading
import time as clock
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from agent.errors import CharlesError
from agent.nets.registry import OUTPUT_NAMES
from agent.store import SAFE_OPEN_FLAGS, fsync_path
from agent.weights import one_line

log = logging.getLogger(__name__)

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".npz"
MAX_SHARD_BYTES = 4 * 1024**3
"""A bigger shard file is refused without being read; so is one whose arrays unpack to more."""
SHARD_FORMAT = "charles-shard"
SHARD_VERSION = 1
_META_LIMIT = 64 * 1024
"""Characters; a shard's meta JSON is a few hundred."""

_FLOAT_LABELS = ("throttle", "steering", "speed")
_LAYOUT: dict[str, tuple[np.dtype, int]] = {
    "frames": (np.dtype(np.uint8), 4),
    "throttle": (np.dtype(np.float32), 1),
    "steering": (np.dtype(np.float32), 1),
    "speed": (np.dtype(np.float32), 1),
    "time": (np.dtype(np.float64), 1),
    "sets": (np.dtype(np.bool_), 2),
}
"""Every array of a shard but meta: its dtype and number of dimensions."""

# What reading a damaged zip or .npy can raise (CRC mismatch, bad header, short data, ...).
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
)


class ShardError(CharlesError):
    """A data folder or shard that cannot be used; the message names it and the fix."""


# --- writing files atomically ----------------------------------------------------------------


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace `path` with what `write` writes to a binary stream, atomically.

    The data goes to a hidden temporary file beside `path` (".<name>.<random>.tmp", never a
    shard name), is flushed to disk, then renamed over `path`: a reader sees the old file or
    the whole new one, never a part. The folder is created (with its parents) when missing.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(temporary, "xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(folder)


# --- reading .npz files safely ---------------------------------------------------------------


class NpzError(Exception):
    """Why an .npz file cannot be read: the problem only; the caller names the file."""


@dataclass(frozen=True)
class ArrayHeader:
    """What an array's .npy header declares, read before any of its data."""

    shape: tuple[int, ...]
    dtype: np.dtype


class NpzArchive:
    """An open .npz file whose headers passed `open_npz`'s checks; read arrays by name."""

    def __init__(self, headers: dict[str, ArrayHeader], npz: Any) -> None:
        self.headers = headers
        self._npz = npz

    def read(self, name: str) -> np.ndarray:
        """The array `name`, exactly as its header declared it; NpzError when it is damaged."""
        header = self.headers[name]
        try:
            array = self._npz[name]
        except _READ_ERRORS as error:
            raise NpzError(f"array {name} is damaged ({one_line(error, 80)})") from None
        if array.shape != header.shape or array.dtype != header.dtype:
            raise NpzError(f"array {name} does not match its own header")
        return array


@contextmanager
def open_npz(
    path: Path, max_file_bytes: int, max_data_bytes: int | None = None
) -> Iterator[NpzArchive]:
    """Open the .npz file `path` for reading without trusting it.

    Refused with `NpzError`: a symbolic link (never followed), anything but a regular file, a
    file over `max_file_bytes`, anything but a zip of .npy arrays, arrays of Python objects
    (loading them would unpickle), arrays declaring more data than their zip entry holds, and
    arrays that would unpack to more than `max_data_bytes` together (default: the file limit).
    All of that is decided from the zip directory and the .npy headers, before any array data
    is unpacked; arrays are then read with `np.load(..., allow_pickle=False)`.
    """
    stream, size = _open_regular(path)
    with stream:
        if size > max_file_bytes:
            raise NpzError(f"it is {size} bytes, more than the {max_file_bytes} a file may have")
        limit = max_file_bytes if max_data_bytes is None else max_data_bytes
        try:
            headers = _read_headers(stream, limit)
            stream.seek(0)
            npz = np.load(stream, allow_pickle=False)
        except _READ_ERRORS as error:
            raise NpzError(f"it is not a valid .npz file ({one_line(error, 80)})") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise NpzError("it is not an .npz file")
        with npz:
            yield NpzArchive(headers, npz)


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """`path` opened for binary reading, and its size; NpzError for anything but a file."""
    if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():
        raise NpzError("it is a symbolic link, which Charles never follows")
    try:
        fd = os.open(path, SAFE_OPEN_FLAGS)
    except FileNotFoundError:
        raise NpzError("it does not exist (deleted meanwhile?)") from None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink():
            raise NpzError("it is a symbolic link, which Charles never follows") from None
        raise NpzError(f"it cannot be opened ({error.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NpzError("it is not a regular file")
    return os.fdopen(fd, "rb"), info.st_size


def _read_headers(stream: BinaryIO, limit: int) -> dict[str, ArrayHeader]:
    """Every array's header, checked against the zip directory and `limit` (bytes unpacked)."""
    headers: dict[str, ArrayHeader] = {}
    with zipfile.ZipFile(stream) as archive:
        entries = archive.infolist()
        unpacked = sum(entry.file_size for entry in entries)
        if unpacked > limit:
            raise NpzError(f"its arrays unpack to {unpacked} bytes, more than the {limit} allowed")
        for entry in entries:
            name = entry.filename.removesuffix(".npy")
            if entry.is_dir() or name == entry.filename:
                raise NpzError(f"it holds {_show(entry.filename)}, which is not an array")
            if name in headers:
                raise NpzError(f"it holds array {_show(name)} twice")
            if entry.flag_bits & 0x1:
                raise NpzError(f"array {_show(name)} is encrypted")
            with archive.open(entry) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise NpzError(f"array {_show(name)} is in .npy format {version}")
            if dtype.hasobject:
                raise NpzError(
                    f"array {_show(name)} holds Python objects (pickled data), "
                    "which Charles never loads"
                )
            if math.prod(shape) * dtype.itemsize > entry.file_size:
                raise NpzError(f"array {_show(name)} declares more data than the file holds")
            headers[name] = ArrayHeader(tuple(int(d) for d in shape), dtype)
    return headers


def _show(value: object) -> str:
    """A value from a file, quoted and short enough for a one-line message."""
    return one_line(repr(value), 40)


# --- shards ----------------------------------------------------------------------------------


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
        with open_npz(path, MAX_SHARD_BYTES) as archive:
            _check_layout(path, archive.headers, (height, width))
            arrays = {name: archive.read(name) for name in (*_LAYOUT, "meta")}
    except NpzError as error:
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
    expected = {*_LAYOUT, "meta"}
    missing = sorted(expected - headers.keys())
    if missing:
        raise _bad_shard(path, f"it lacks the arrays {', '.join(missing)}")
    extra = sorted(headers.keys() - expected)
    if extra:
        raise _bad_shard(path, f"it holds unknown arrays {_show(', '.join(extra))}")
    for name, (dtype, ndim) in _LAYOUT.items():
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
    lengths = {name: headers[name].shape[0] for name in _LAYOUT}
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
            path, f"it is {SHARD_FORMAT} version {_show(data.get('version'))}, not {SHARD_VERSION}"
        )
    shape, source = data.get("input_shape"), data.get("source")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise _bad_shard(path, f"its meta input_shape {_show(shape)} is not [H, W, 3]")
    if not isinstance(source, str) or not isinstance(data.get("writer"), str):
        raise _bad_shard(path, "its meta source and writer must be text")
    return data


def _bad_shard(path: Path, problem: str) -> ShardError:
    return ShardError(
        f"shard {path} cannot be used: {problem}; delete it or move it out of the data folder"
    )


# --- writing shards --------------------------------------------------------------------------

_sequence = itertools.count()
_sequence_lock = threading.Lock()


def _next_sequence() -> int:
    """A number no other writer in this process gets, so same-millisecond names differ."""
    with _sequence_lock:
        return next(_sequence)


def _unix_millis() -> int:
    return int(clock.time() * 1000)


def _host_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def _check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (height, width, 3), not {input_shape!r}")
    return shape  # type: ignore[return-value]


class ShardWriter:
    """Collects samples and publishes them as shards of `samples_per_shard` into `folder`.

    Names are `shard-{host}-{pid}-{unix ms}-{seq:06d}.npz`, unique across the processes and
    machines sharing the folder; each shard appears atomically. Not thread-safe: one writer
    per collecting thread.
    """

    def __init__(
        self,
        folder: Path,
        source: str,
        input_shape: tuple[int, int, int],
        samples_per_shard: int = 500,
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1, not {samples_per_shard}")
        self.folder = Path(folder)
        self.source = source
        self.input_shape = _check_input_shape(input_shape)
        self.samples_per_shard = samples_per_shard
        self.shards_written = 0
        self.samples_written = 0
        self._host = _host_name()
        self._count = 0
        self._frames = np.empty((samples_per_shard, *self.input_shape), dtype=np.uint8)
        self._columns = {
            name: np.empty(samples_per_shard, dtype=dtype)
            for name, (dtype, ndim) in _LAYOUT.items()
            if ndim == 1
        }
        self._sets = np.empty((samples_per_shard, len(OUTPUT_NAMES)), dtype=bool)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ShardError(
                f"cannot create data folder {self.folder} ({error.strerror}); set data.folder "
                "to a folder this user can write"
            ) from None

    def add(
        self,
        frame: np.ndarray,
        throttle: float,
        steering: float,
        speed: float,
        time: float,
        sets: tuple[bool, bool],
    ) -> None:
        """Hold one sample; publish a shard when `samples_per_shard` are held.

        ValueError for a frame that is not uint8 of `input_shape`, a label that is not a
        finite number in [-1, 1], an infinite speed (NaN means unknown), or a time that is
        not finite.
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError("a frame must be a uint8 numpy array")
        if frame.shape != self.input_shape:
            raise ValueError(f"frame shape {frame.shape} is not the writer's {self.input_shape}")
        for name, value in (("throttle", throttle), ("steering", steering)):
            if not (math.isfinite(value) and -1.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a finite number in [-1, 1], not {value!r}")
        if math.isinf(speed):
            raise ValueError(f"speed must be finite or NaN (unknown), not {speed!r}")
        if not math.isfinite(time):
            raise ValueError(f"time must be finite unix seconds, not {time!r}")
        if len(sets) != len(OUTPUT_NAMES):
            raise ValueError(f"sets must hold one flag per output {OUTPUT_NAMES}, not {sets!r}")
        if self._count == self.samples_per_shard:
            self.flush()  # the last publish failed; try again before taking more
        i = self._count
        self._frames[i] = frame
        row = {"throttle": throttle, "steering": steering, "speed": speed, "time": time}
        for name, column in self._columns.items():
            column[i] = row[name]
        self._sets[i] = [bool(flag) for flag in sets]
        self._count += 1
        if self._count == self.samples_per_shard:
            self.flush()

    def flush(self) -> Path | None:
        """Publish the samples held as one shard; its path, or None when none were held."""
        count = self._count
        if count == 0:
            return None
        meta = {
            "format": SHARD_FORMAT,
            "version": SHARD_VERSION,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "writer": f"charles on {self._host}, pid {os.getpid()}",
        }
        arrays = {
            "frames": self._frames[:count],
            **{name: column[:count] for name, column in self._columns.items()},
            "sets": self._sets[:count],
            "meta": np.array(json.dumps(meta)),
        }
        path = self._new_path()
        write_atomically(path, lambda stream: np.savez_compressed(stream, **arrays))
        self._count = 0
        self.shards_written += 1
        self.samples_written += count
        return path

    def close(self) -> None:
        """Publish whatever is held (same as `flush`)."""
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_path(self) -> Path:
        while True:
            name = (
                f"{SHARD_PREFIX}{self._host}-{os.getpid()}-{_unix_millis()}-{_next_sequence():06d}"
                f"{SHARD_SUFFIX}"
            )
            path = self.folder / name
            # Names are unique by construction; this only guards a clock or pid reused oddly.
            if not os.path.lexists(path):
                return path


# --- watching a data folder ------------------------------------------------------------------


class ShardWatcher:
    """Finds and reads the shards that appeared in a data folder since the last poll.

    Only names are remembered (`loaded_names`, which a restarted trainer can pass back as
    `already_loaded`), never the shards themselves. A shard that cannot be used is logged
    once, in one line, and skipped for good: it is never read again.
    """

    def __init__(
        self,
        folder: Path,
        input_shape: tuple[int, int, int],
        already_loaded: Iterable[str] = (),
    ) -> None:
        self.folder = Path(folder)
        self.input_shape = _check_input_shape(input_shape)
        self.loaded_names: set[str] = set(already_loaded)
        self.skipped = 0
        self._skipped_names: set[str] = set()

    def poll(self, limit: int | None = None) -> list[Shard]:
        """The new shards, in name order; at most `limit` (the rest wait for the next poll).

        Raises `ShardError` when the folder does not exist or cannot be listed.
        """
        shards: list[Shard] = []
        for name in self._new_names():
            if limit is not None and len(shards) >= limit:
                break
            path = self.folder / name
            try:
                shard = read_shard(path, self.input_shape)
            except ShardError as error:
                if not os.path.lexists(path):
                    continue  # deleted since listed: nothing to skip or warn about
                self._skipped_names.add(name)
                self.skipped += 1
                log.warning("skipping a shard: %s", one_line(error, 1000))
                continue
            self.loaded_names.add(name)
            shards.append(shard)
        return shards

    def _new_names(self) -> list[str]:
        folder = self.folder
        try:
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            raise ShardError(
                f"data folder {folder} does not exist; start charles collect to fill it, or "
                "set data.folder to the folder the collectors write"
            ) from None
        except NotADirectoryError:
            raise ShardError(
                f"data folder {folder} is not a folder; set data.folder to the collectors' folder"
            ) from None
        except OSError as error:
            raise ShardError(
                f"data folder {folder} cannot be listed ({error.strerror}); give this user "
                "access to it or set data.folder to another folder"
            ) from None
        known = self.loaded_names | self._skipped_names
        return sorted(name for name in names if is_shard_name(name) and name not in known)
