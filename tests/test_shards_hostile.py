"""Hostile shards and data folders: zip bombs, lying zip entries, planted links.

Shards come from a shared folder, so the trainer reads them as untrusted files: sizes are
checked from the zip directory and the .npy headers before anything is inflated, and a bomb
costs a log line, never memory. The collector writes nothing through a link. Memory is
measured as the peak RSS of a child process that reads the folder with the trainer's own
loading path (`ShardWatcher.poll`).
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent import files
from agent.config import load_config
from agent.files import write_atomically
from agent.learn import shard_format
from agent.learn.shard_format import ShardError, read_shard
from agent.learn.shard_writer import ShardWriter
from agent.learn.sink import SampleSink
from tests.helpers.charles import REPO

SHAPE = (90, 160, 3)
"""pilotnet_small's input: a frame is 43,200 bytes."""
MiB = 1 << 20


# --- a child process and its peak memory -----------------------------------------------------


@dataclass(frozen=True)
class Child:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    """Bytes the child's resident set rose above what it held when its code called
    `_start_measuring()` (after its imports), at its peak: what the measured work cost."""


# The child's own peak (VmHWM), written when it exits (also after an uncaught exception),
# less its resident set when `_start_measuring()` reset that peak (Linux: clear_refs 5), so
# what its imports cost (more under mutation testing's instrumented modules) is not counted.
# Not ru_maxrss: the kernel carries the parent's peak across fork and exec into it.
_PEAK_PROLOGUE = """
import atexit as _atexit, os as _os
_baseline = [0]
def _status(field):
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith(field)))
def _start_measuring():
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    _baseline[0] = _status("VmRSS:")
def _report_peak():
    with open(_os.environ["CHARLES_TEST_PEAK"], "w") as out:
        out.write(str(_status("VmHWM:") - _baseline[0]))
_atexit.register(_report_peak)
"""


def run_child(code: str, *args: str, timeout: float = 60, address_space: int = 0) -> Child:
    """Run `python -c code args` from the repository; its output and its own peak RSS.

    `address_space` (bytes) caps the child's memory, so code that would allocate without
    bound fails there instead of taking the machine; a child still running after `timeout`
    seconds is killed (returncode -9, peak unknown: reported as 1 TiB).
    """

    def limit() -> None:
        if address_space:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    with tempfile.TemporaryDirectory() as folder:
        peak = Path(folder) / "peak"
        env = {
            **os.environ,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "CHARLES_TEST_PEAK": str(peak),
        }
        process = subprocess.Popen(
            [sys.executable, "-c", _PEAK_PROLOGUE + code, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
            preexec_fn=limit,
        )  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        peak_kib = int(peak.read_text()) if peak.exists() else 1 << 30
        return Child(process.returncode, stdout, stderr, peak_kib * 1024)


# --- zip files written by hand, so they can lie ----------------------------------------------


@dataclass(frozen=True)
class Member:
    """One zip entry: `payload` then `zeros` zero bytes; the directory may declare only the
    first `declared` bytes (CRC and size of that prefix), and the entry may use another
    compression method than deflate."""

    name: str
    payload: bytes
    zeros: int = 0
    declared: int | None = None
    method: int = 8


def npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, allow_pickle=False)
    return stream.getvalue()


def npy_header(shape: tuple[int, ...], dtype: object) -> bytes:
    stream = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue()


def _crc_of_zeros(crc: int, count: int) -> int:
    chunk = bytes(MiB)
    while count > 0:
        crc = zlib.crc32(chunk[: min(count, MiB)], crc)
        count -= MiB
    return crc


def _deflate(payload: bytes, zeros: int) -> bytes:
    """Raw deflate of payload + zeros; a whole MiB of zeros after a full flush compresses to
    the same block every time, so hundreds of MiB cost a few hundred KB and no time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(payload), compressor.flush(zlib.Z_FULL_FLUSH)]
    whole, rest = divmod(zeros, MiB)
    if whole:
        block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
        parts.append(block * whole)
    parts.append(compressor.compress(bytes(rest)) + compressor.flush())
    return b"".join(parts)


def write_zip(path: Path, members: list[Member], listed: int | None = None) -> None:
    """A zip of `members` (no zip64: every size below 4 GiB); its end record says it lists
    `listed` entries (default: the truth)."""
    directory, offset = [], 0
    with open(path, "wb") as stream:
        for member in members:
            size = len(member.payload) + member.zeros
            declared = size if member.declared is None else member.declared
            crc = zlib.crc32(member.payload[:declared])
            crc = _crc_of_zeros(crc, max(0, declared - len(member.payload)))
            if member.method == 8:
                data = _deflate(member.payload, member.zeros)
            elif member.method == 12:
                import bz2

                data = bz2.compress(member.payload + bytes(member.zeros))
            else:  # stored: the zeros are a hole in a sparse file, costing no disk
                data = member.payload
            name = member.name.encode()
            stored = len(data) + (member.zeros if member.method == 0 else 0)
            fields = (member.method, 0, 0x21, crc, stored, declared, len(name))
            stream.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, *fields, 0))
            stream.write(name + data)
            if member.method == 0:
                stream.seek(member.zeros, os.SEEK_CUR)
            directory.append(
                struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, *fields, 0, 0, 0, 0, 0, offset)
                + name
            )
            offset = stream.tell()
        table = b"".join(directory)
        stream.write(table)
        count = len(members) if listed is None else listed
        stream.write(
            struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(table), offset, 0)
        )


def shard_members(samples: int, frame_zeros: int | None = None) -> list[Member]:
    """The members of a sound shard of `samples` zero frames of SHAPE; `frame_zeros` puts
    that many zero bytes after the frames' header instead of the right number."""
    frame_bytes = samples * int(np.prod(SHAPE))
    meta = {
        "format": "charles-shard",
        "version": 1,
        "source": "test",
        "input_shape": list(SHAPE),
        "writer": "test",
    }
    columns = {
        "throttle": np.zeros(samples, np.float32),
        "steering": np.zeros(samples, np.float32),
        "speed": np.zeros(samples, np.float32),
        "time": np.zeros(samples, np.float64),
        "sets": np.ones((samples, 2), bool),
        "meta": np.array(json.dumps(meta)),
    }
    header = npy_header((samples, *SHAPE), np.uint8)
    zeros = frame_bytes if frame_zeros is None else frame_zeros
    frames = Member("frames.npy", header, zeros, len(header) + frame_bytes)
    return [frames, *(Member(f"{name}.npy", npy(array)) for name, array in columns.items())]


def _write_good_shard(folder: Path, samples: int = 3) -> Path:
    writer = ShardWriter(folder, "autopilot", SHAPE)
    for index in range(samples):
        writer.add(np.full(SHAPE, index, np.uint8), 0.1, -0.1, 1.0, 1.7e9 + index, (True, True))
    path = writer.flush()
    assert path is not None
    return path


_POLL = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from agent.learn.shard_watcher import ShardWatcher
watcher = ShardWatcher(Path(sys.argv[1]), (90, 160, 3))
_start_measuring()
shards = watcher.poll()
print("loaded", sum(len(shard) for shard in shards), "skipped", watcher.skipped)
"""


# --- item 12: bombs --------------------------------------------------------------------------


def test_a_shard_bomb_is_skipped_from_its_headers_in_bounded_memory(tmp_path: Path) -> None:
    """600 MB of frames in a file of under a MB: refused from the zip directory and headers
    before anything is inflated, with one log line; the good shard beside it still loads."""
    data = tmp_path / "data"
    data.mkdir()
    samples = 14_000  # 14,000 x 43,200 bytes = 604.8 MB declared
    bomb = data / "shard-bomb.npz"
    write_zip(bomb, shard_members(samples))
    assert bomb.stat().st_size < 2 * MiB
    _write_good_shard(data)

    child = run_child(_POLL, str(data), timeout=120)

    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["loaded", "3", "skipped", "1"]
    skipped = [line for line in child.stderr.splitlines() if "skipping a shard" in line]
    assert len(skipped) == 1, child.stderr
    assert "shard-bomb.npz" in skipped[0] and "unpack to" in skipped[0], skipped[0]
    declared = samples * int(np.prod(SHAPE))
    assert child.peak_rss < 64 * MiB < declared / 8, child.peak_rss


def test_an_entry_that_inflates_past_what_it_declares_is_never_inflated_further(
    tmp_path: Path,
) -> None:
    """The directory declares 3 frames; the deflate stream holds 600 MB more zeros. Reading
    stops at the declared size, so the shard is what it declares and memory stays flat."""
    data = tmp_path / "data"
    data.mkdir()
    write_zip(data / "shard-liar.npz", shard_members(3, frame_zeros=600 * MiB))
    child = run_child(_POLL, str(data), timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["loaded", "3", "skipped", "0"], child.stderr
    assert child.peak_rss < 64 * MiB, child.peak_rss


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        ("many entries", "zip directory lists 20007 entries, more than the 16 expected"),
        ("a directory larger than its end record says", "zip directory is 1109279 bytes"),
        ("more entries than its end record says", "it holds 27 files, more than the 16"),
        ("bzip2", "not deflate"),
        ("data after the array", "declares 129600 bytes of data but its zip entry holds"),
        ("long header", "far too long"),
    ],
)
def test_odd_zips_are_refused_before_inflating(tmp_path: Path, damage: str, phrase: str) -> None:
    members = shard_members(3)
    frames = members[0]
    listed = None
    if damage == "many entries":  # zipfile would parse every entry into memory
        members += [Member(f"x{index}.npy", b"") for index in range(20_000)]
    elif damage == "a directory larger than its end record says":
        members += [Member(f"x{index}.npy", b"") for index in range(20_000)]
        listed = 7
    elif damage == "more entries than its end record says":
        members += [Member(f"x{index}.npy", b"") for index in range(20)]
        listed = 7
    elif damage == "bzip2":  # inflated in one unbounded call by zipfile
        members[0] = Member(frames.name, frames.payload, frames.zeros, method=12)
    elif damage == "data after the array":
        members[0] = Member(frames.name, frames.payload, frames.zeros + 10)
    else:  # a format 2.0 header that says it is 100 MB long
        members[0] = Member(frames.name, b"\x93NUMPY\x02\x00" + struct.pack("<I", 100 * MiB))
    path = tmp_path / "shard-odd.npz"
    write_zip(path, members, listed)
    with pytest.raises(ShardError) as caught:
        read_shard(path, SHAPE)
    assert phrase in str(caught.value) and "\n" not in str(caught.value)


def test_a_writer_splits_its_samples_so_no_shard_outgrows_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = (4, 6, 3)
    per_sample = 72 + 4 * 3 + 8 + 2  # frame, three float32 labels, time, two set flags
    monkeypatch.setattr(
        shard_format, "MAX_SHARD_DATA_BYTES", shard_format._SHARD_OVERHEAD + 10 * per_sample
    )
    assert shard_format.shard_samples_limit(shape) == 10
    writer = ShardWriter(tmp_path, "autopilot", shape, samples_per_shard=25)
    for index in range(25):
        writer.add(np.full(shape, index, np.uint8), 0.0, 0.0, 0.0, 1.7e9, (True, True))
    writer.close()
    paths = sorted(tmp_path.glob("shard-*.npz"))
    assert [len(read_shard(path, shape)) for path in paths] == [10, 10, 5]


# --- writing: nothing through a link ---------------------------------------------------------


def test_a_link_planted_at_the_temporary_name_is_passed_over_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "state"
    folder.mkdir()
    planted = folder / ".loaded-shards.txt.planted.tmp"
    planted.symlink_to(victim)
    names = iter(["planted", "planted", "fresh"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda _bytes: next(names))

    write_atomically(folder / "loaded-shards.txt", lambda stream: stream.write(b"new\n"))

    assert victim.read_text() == "precious"
    assert planted.is_symlink()  # someone else's name: never written, never deleted
    assert (folder / "loaded-shards.txt").read_bytes() == b"new\n"
    assert not (folder / ".loaded-shards.txt.fresh.tmp").exists()


def test_the_collectors_histogram_and_shards_replace_links_instead_of_writing_through(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = load_config(
        REPO / "config.toml",
        {"data.folder": str(data), "data.samples_per_shard": "2", "model.line": "pilotnet_small"},
    )
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    data.mkdir()
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    histogram = data / f"histogram-{host}-{os.getpid()}.png"
    histogram.symlink_to(victim)
    sink = SampleSink(config, "autopilot", SHAPE)
    for index in range(5):
        sink.offer(np.zeros(SHAPE, np.uint8), 0.3, (index - 2) / 4, 10.0)
    assert sink.close() == str(histogram)
    assert victim.read_bytes() == b"precious"
    assert not histogram.is_symlink() and histogram.read_bytes().startswith(b"\x89PNG")
    assert sink.writer.shards_written >= 1
    assert not [path for path in data.iterdir() if path.name.endswith(".tmp")]
