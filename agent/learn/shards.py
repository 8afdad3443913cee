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
untrusted input: nothing in it is executed or unpickled, a link is never followed, a FIFO or
device is never waited on, and every size is checked before anything is inflated: the zip
directory's entry count and declared sizes, and each array's .npy header (dtype and shape,
against the model line's input shape) add up to at most MAX_SHARD_DATA_BYTES (256 MiB), and an
array is inflated into exactly its declared size, never past it. A damaged or hostile file
costs one warning, never the trainer's memory.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import logging
import math
import os
import re
import socket
import struct
import threading
import time as clock
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from agent.errors import CharlesError, one_line, quoted
from agent.files import FileRefused, open_regular_file, write_atomically
from agent.nets.registry import OUTPUT_NAMES

log = logging.getLogger(__name__)

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
    TypeError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
)


class ShardError(CharlesError):
    """A data folder or shard that cannot be used; the message names it and the fix."""


# --- reading .npz files safely ---------------------------------------------------------------

_CHUNK_BYTES = 1 << 20
"""Bytes inflated at a time: the most an array read holds beyond the array itself."""
_MAX_NPY_HEADER = 10_000
"""Bytes; numpy's own limit for a trusted .npy header (a real one is about 128)."""
_DIRECTORY_BYTES_PER_ARRAY = 1024
"""Zip directory bytes allowed per array (an entry is 46 bytes plus its name and extras)."""
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True)
class ArrayHeader:
    """What an array's .npy header declares, read before any of its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class _Member:
    entry: zipfile.ZipInfo
    header: ArrayHeader
    offset: int
    """Bytes of .npy header before the array's data."""


class NpzArchive:
    """An open .npz file whose headers passed `open_npz`'s checks; read arrays by name."""

    def __init__(self, archive: zipfile.ZipFile, members: dict[str, _Member]) -> None:
        self.headers = {name: member.header for name, member in members.items()}
        self._archive = archive
        self._members = members

    def read(self, name: str) -> np.ndarray:
        """The array `name`, exactly as its header declared it; FileRefused when damaged.

        Inflated into an array of the declared size and never past it, so a zip entry whose
        data inflates to more than its directory says costs nothing extra.
        """
        header = self.headers[name]
        shape = header.shape[::-1] if header.fortran_order else header.shape
        array = np.empty(shape, dtype=header.dtype)
        flat = array.reshape(-1).view(np.uint8)
        with self._data(name) as stream:
            _read_into(stream, memoryview(flat), name)
            _expect_end(stream, name)
        return array.T if header.fortran_order else array

    def read_rows(self, name: str, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy rows `rows` (ascending indices along the first axis) of array `name` into
        `out[0]`, `out[1]`, ...; the rest is streamed past, never held (at most
        `_CHUNK_BYTES` at a time beyond `out`). FileRefused when the array is damaged."""
        header = self.headers[name]
        if header.fortran_order or not header.shape:
            raise FileRefused(f"array {name} is not stored row by row")
        row_bytes = math.prod(header.shape[1:]) * header.dtype.itemsize
        if (
            out.dtype != header.dtype
            or out.shape[1:] != header.shape[1:]
            or len(out) != len(rows)
            or not out.flags.c_contiguous
        ):
            raise ValueError(f"out does not fit {len(rows)} rows of array {name}")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows[0] < 0 or rows[-1] >= header.shape[0] or (np.diff(rows) <= 0).any()):
            raise ValueError("rows must be ascending indices of the array's rows")
        block = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        scratch = np.empty((block, *header.shape[1:]), dtype=header.dtype)
        view = memoryview(scratch.reshape(-1).view(np.uint8))
        taken = 0
        with self._data(name) as stream:
            for start in range(0, header.shape[0], block):
                count = min(block, header.shape[0] - start)
                _read_into(stream, view[: count * row_bytes], name)
                end = taken + int(np.searchsorted(rows[taken:], start + count))
                out[taken:end] = scratch[rows[taken:end] - start]
                taken = end
            _expect_end(stream, name)

    @contextmanager
    def _data(self, name: str) -> Iterator[BinaryIO]:
        """Array `name`'s zip entry, opened past its .npy header."""
        member = self._members[name]
        try:
            stream = self._archive.open(member.entry)
            _read_exactly(stream, member.offset)
        except _READ_ERRORS as error:
            raise FileRefused(f"array {name} is damaged ({one_line(error, 80)})") from None
        with stream:
            yield stream


def _read_into(stream: BinaryIO, target: memoryview, name: str) -> None:
    """Fill `target` from `stream`, exactly."""
    position = 0
    try:
        while position < len(target):
            chunk = stream.read(min(_CHUNK_BYTES, len(target) - position))
            if not chunk:
                raise FileRefused(f"array {name} holds less data than its header declares")
            target[position : position + len(chunk)] = chunk
            position += len(chunk)
    except _READ_ERRORS as error:
        raise FileRefused(f"array {name} is damaged ({one_line(error, 80)})") from None


def _expect_end(stream: BinaryIO, name: str) -> None:
    """Nothing may follow an array's data; reading to the end also checks the entry's CRC."""
    try:
        more = stream.read(1)
    except _READ_ERRORS as error:
        raise FileRefused(f"array {name} is damaged ({one_line(error, 80)})") from None
    if more:
        raise FileRefused(f"array {name} holds more data than its header declares")


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError("the file ends early")
        data += chunk
    return data


@contextmanager
def open_npz(
    path: Path, max_file_bytes: int, max_data_bytes: int | None = None, max_arrays: int = 64
) -> Iterator[NpzArchive]:
    """Open the .npz file `path` for reading without trusting it.

    Refused with `FileRefused`: a symbolic link (never followed), anything but a regular
    file, a file over `max_file_bytes`, anything but a zip of at most `max_arrays` .npy arrays
    (a zip directory of more entries or bytes than that needs is refused before it is
    parsed), encrypted entries or compression other than deflate, arrays of Python objects
    (loading them would unpickle) or of structured types, an array whose data is not exactly
    what its zip entry declares, and arrays that would unpack to more than `max_data_bytes`
    together (default: the file limit). All of that is decided from the zip directory and
    the .npy headers, before any array data is inflated; arrays are then inflated into
    arrays of their declared size, never past it (`NpzArchive.read`).
    """
    stream, info = open_regular_file(path)
    size = info.st_size
    with stream:
        if size > max_file_bytes:
            raise FileRefused(f"it is {size} bytes, more than the {max_file_bytes} a file may have")
        limit = max_file_bytes if max_data_bytes is None else max_data_bytes
        try:
            _check_directory(stream, size, max_arrays)
            archive = zipfile.ZipFile(stream)
        except _READ_ERRORS as error:
            raise FileRefused(f"it is not a valid .npz file ({one_line(error, 80)})") from None
        with archive:
            yield NpzArchive(archive, _read_members(archive, limit, max_arrays))


def _check_directory(stream: BinaryIO, size: int, max_arrays: int) -> None:
    """Refuse a zip whose directory lists more than `max_arrays` entries, or is larger than
    that many need, from its end record alone: zipfile would parse all of it into memory."""
    tail_size = min(size, _EOCD.size + 0xFFFF)
    stream.seek(size - tail_size)
    tail = stream.read(tail_size)
    # Where zipfile looks: the last 22 bytes, else the last signature (after a comment).
    at = len(tail) - _EOCD.size
    if not (at >= 0 and tail[at : at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise FileRefused("it is not a valid .npz file (no zip end record)")
    *_, entries, directory, _, _ = _EOCD.unpack_from(tail, at)
    if at >= _ZIP64_LOCATOR.size:
        signature, _, record, _ = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
        if signature == b"PK\x06\x07":
            stream.seek(record)
            data = stream.read(_ZIP64_EOCD.size)
            if len(data) < _ZIP64_EOCD.size or data[:4] != b"PK\x06\x06":
                raise FileRefused("it is not a valid .npz file (damaged zip64 end record)")
            *_, entries, directory, _ = _ZIP64_EOCD.unpack(data)
    if entries > max_arrays:
        raise FileRefused(
            f"its zip directory lists {entries} entries, more than the {max_arrays} expected"
        )
    if directory > max_arrays * _DIRECTORY_BYTES_PER_ARRAY:
        raise FileRefused(f"its zip directory is {directory} bytes, far more than it needs")


def _read_members(archive: zipfile.ZipFile, limit: int, max_arrays: int) -> dict[str, _Member]:
    """Every array's entry and header, checked against `limit` (bytes unpacked) first."""
    entries = archive.infolist()
    if len(entries) > max_arrays:
        raise FileRefused(f"it holds {len(entries)} files, more than the {max_arrays} expected")
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > limit:
        raise FileRefused(f"its arrays unpack to {unpacked} bytes, more than the {limit} allowed")
    members: dict[str, _Member] = {}
    for entry in entries:
        name = entry.filename.removesuffix(".npy")
        if entry.is_dir() or name == entry.filename:
            raise FileRefused(f"it holds {quoted(entry.filename)}, which is not an array")
        if name in members:
            raise FileRefused(f"it holds array {quoted(name)} twice")
        if entry.flag_bits & 0x1:
            raise FileRefused(f"array {quoted(name)} is encrypted")
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise FileRefused(
                f"array {quoted(name)} is compressed with zip method {entry.compress_type}, "
                "not deflate"
            )
        try:
            with archive.open(entry) as stream:
                header, offset = _read_npy_header(stream, name)
        except _READ_ERRORS as error:
            raise FileRefused(
                f"array {quoted(name)} has a damaged header ({one_line(error, 80)})"
            ) from None
        if offset + header.nbytes != entry.file_size:
            raise FileRefused(
                f"array {quoted(name)} declares {header.nbytes} bytes of data but its zip entry "
                f"holds {entry.file_size - offset}"
            )
        members[name] = _Member(entry, header, offset)
    return members


def _read_npy_header(stream: BinaryIO, name: str) -> tuple[ArrayHeader, int]:
    """An .npy header (format 1.0 or 2.0) and its length in bytes, its size checked before
    it is read."""
    magic = _read_exactly(stream, 8)
    if magic[:6] != b"\x93NUMPY":
        raise FileRefused(f"array {quoted(name)} is not in .npy format")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0)):
        raise FileRefused(f"array {quoted(name)} is in .npy format {version}")
    length_format = "<H" if version == (1, 0) else "<I"
    length_field = _read_exactly(stream, struct.calcsize(length_format))
    (length,) = struct.unpack(length_format, length_field)
    if length > _MAX_NPY_HEADER:
        raise FileRefused(f"array {quoted(name)} has a header of {length} bytes, far too long")
    text = io.BytesIO(length_field + _read_exactly(stream, length))
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(text)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(text)
    if dtype.hasobject:
        raise FileRefused(
            f"array {quoted(name)} holds Python objects (pickled data), which Charles never loads"
        )
    if dtype.fields is not None or dtype.subdtype is not None:
        raise FileRefused(f"array {quoted(name)} has a structured type")
    if any(d < 0 for d in shape):
        raise FileRefused(f"array {quoted(name)} has a negative dimension")
    header = ArrayHeader(tuple(int(d) for d in shape), dtype, bool(fortran_order))
    return header, 8 + len(length_field) + length


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
        with open_npz(path, MAX_SHARD_BYTES, MAX_SHARD_DATA_BYTES, _SHARD_ENTRIES) as archive:
            _check_layout(path, archive.headers, (height, width))
            arrays = {name: archive.read(name) for name in (*_LAYOUT, "meta")}
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
    expected = {*_LAYOUT, "meta"}
    missing = sorted(expected - headers.keys())
    if missing:
        raise _bad_shard(path, f"it lacks the arrays {', '.join(missing)}")
    extra = sorted(headers.keys() - expected)
    if extra:
        raise _bad_shard(path, f"it holds unknown arrays {quoted(', '.join(extra))}")
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


def shard_samples_limit(input_shape: tuple[int, int, int]) -> int:
    """The most samples of `input_shape` one shard may hold within MAX_SHARD_DATA_BYTES."""
    per_sample = math.prod(input_shape) + sum(
        dtype.itemsize * (len(OUTPUT_NAMES) if ndim == 2 else 1)
        for name, (dtype, ndim) in _LAYOUT.items()
        if name != "frames"
    )
    return (MAX_SHARD_DATA_BYTES - _SHARD_OVERHEAD) // per_sample


def _check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (height, width, 3), not {input_shape!r}")
    return shape  # type: ignore[return-value]


class ShardWriter:
    """Collects samples and publishes them as shards of `samples_per_shard` into `folder`.

    A shard never holds more than `shard_samples_limit(input_shape)` samples, so every shard
    it writes is one a reader accepts; a larger `samples_per_shard` is lowered to that (with
    one log line). Names are `shard-{host}-{pid}-{unix ms}-{seq:06d}.npz`, unique across the
    processes and machines sharing the folder; each shard appears atomically. Not
    thread-safe: one writer per collecting thread.
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
        limit = shard_samples_limit(self.input_shape)
        if limit < 1:
            raise ValueError(f"a frame of {self.input_shape} is larger than a shard may be")
        if samples_per_shard > limit:
            log.info(
                "shards of %s frames hold at most %d samples (%d MiB unpacked); writing %d "
                "a shard instead of %d", "x".join(map(str, self.input_shape)), limit,
                MAX_SHARD_DATA_BYTES >> 20, limit, samples_per_shard,
            )  # fmt: skip
        self.samples_per_shard = min(samples_per_shard, limit)
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
        try:
            write_atomically(path, lambda stream: np.savez_compressed(stream, **arrays))
        except OSError as error:  # a full disk, a folder taken away: the user's to fix
            raise ShardError(cannot_write(self.folder, "a shard", error)) from None
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


def cannot_write(folder: Path, what: str, error: OSError) -> str:
    """The one-line message for `what` that could not be written into data folder `folder`."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free some space there"
    else:
        fix = "check that this user can write there"
    return (
        f"cannot write {what} into data folder {folder} ({error.strerror or error}); {fix}, "
        "or set data.folder to another folder"
    )


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
