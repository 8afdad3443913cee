"""Writing sample shards into a data folder (the format: agent.learn.shard_format).

Several collectors, on this machine or others, may write into one shared folder with no
coordination beyond names: a shard's name holds its writer's host, process id, time and a
sequence number. A shard is written under a hidden temporary name and renamed into place, so
a reader polling the folder never sees half of one.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import re
import socket
import threading
import time as clock
from pathlib import Path

import numpy as np

from agent.files import write_atomically
from agent.learn.shard_format import (
    MAX_SHARD_DATA_BYTES,
    SHARD_ARRAYS,
    SHARD_FORMAT,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    SHARD_VERSION,
    ShardError,
    check_input_shape,
    shard_samples_limit,
)
from agent.nets.registry import OUTPUT_NAMES

log = logging.getLogger(__name__)

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
        self.input_shape = check_input_shape(input_shape)
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
            for name, (dtype, ndim) in SHARD_ARRAYS.items()
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
