"""Reading an .npz file (numpy's zip of .npy arrays) without trusting it.

Shards come from a shared folder and the trainer's own copies from disk, so nothing in an .npz
is executed or unpickled, a link is never followed, a FIFO or device is never waited on, and
every size is checked before anything is inflated: the zip directory's entry count and
declared sizes, and each array's .npy header (dtype and shape), add up to at most the limit the
caller gives, and an array is inflated into exactly its declared size, never past it. A damaged
or hostile file is a `FileRefused`, never the reader's memory.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from agent.errors import one_line, quoted
from agent.files import FileRefused, open_regular_file

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
