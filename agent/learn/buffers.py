"""Training buffers: one per output, filled from its balanced set, drained by random draws.

The seed's rule: each output has its own buffer (25,000 samples by default) holding samples of
that output's balanced set. Training starts once every buffer is at least 90% full; a batch
draws the same number of random samples from each buffer, so every output's balanced set is
equally represented whatever the collectors send. A drawn sample is removed and never used
again, so the network never sees the same frame twice while fresh data keeps coming. As an
extension a sample may be drawn up to `max_uses` times before it leaves (1: the seed's rule),
for when data arrives slower than training consumes it.

A full buffer makes room by dropping its oldest sample (first in, first out). A rotating
on-disk copy (two slot files, the older one overwritten) lets a restarted trainer refill at
once instead of waiting for the collectors. A copy is read like any file from outside: never
through a link, never from a FIFO or device, and only after its zip directory and array
headers showed sizes this trainer's buffers can hold (at most `MAX_COPY_FACTOR` times their
capacity); its frames are streamed straight into the buffers, so loading one never holds more
than the buffers themselves.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import one_line, quoted
from agent.files import FileRefused, write_atomically
from agent.learn.npz_reader import NpzArchive, open_npz
from agent.nets.registry import OUTPUT_NAMES

log = logging.getLogger(__name__)

BUFFERS_FORMAT = "charles-buffers"
BUFFERS_VERSION = 1
SLOT_NAMES = ("buffers-0.npz", "buffers-1.npz")
"""The two files of the rotating copy; each save overwrites the older one."""
MAX_COPY_FACTOR = 4
"""A copy may hold up to this many times a buffer's capacity per buffer (one saved by a
trainer with larger buffers: the newest samples are kept); a larger one is refused unread."""
_META_CHARS = 64 * 1024
"""Characters a copy's meta JSON may have; it has about 150."""
_COPY_OVERHEAD = 4 * _META_CHARS + (1 << 20)
"""Bytes of a copy that are not samples, at most: meta (4 bytes a character), zip and headers."""
_ARRAYS = {
    "frames": np.dtype(np.uint8),
    "labels": np.dtype(np.float32),
    "uses": np.dtype(np.int32),
    "order": np.dtype(np.int64),
}
"""Each buffer's arrays in a copy, saved as `<output>_<array>`, and their dtypes."""


class SampleBuffer:
    """A fixed-capacity pool of (frame, labels) samples for one output.

    Storage is preallocated and kept compact: the samples present occupy the first `len`
    slots. Each slot also records when its sample arrived (an insertion counter, for FIFO
    replacement) and how often it has been drawn.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        input_shape: tuple[int, int, int],
        max_uses: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be at least 1, not {capacity}")
        if max_uses < 1:
            raise ValueError(f"max_uses must be at least 1, not {max_uses}")
        self.name = name
        self.capacity = int(capacity)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.max_uses = int(max_uses)
        self.drawn_total = 0
        """Samples handed out by `draw` (a sample drawn twice counts twice)."""
        self.removed_total = 0
        """Samples removed because they reached `max_uses`."""
        self.replaced_total = 0
        """Samples dropped, unused up, to make room for newer ones."""
        self._rng = rng if rng is not None else np.random.default_rng()
        self._frames = np.zeros((self.capacity, *self.input_shape), dtype=np.uint8)
        self._labels = np.zeros((self.capacity, len(OUTPUT_NAMES)), dtype=np.float32)
        self._uses = np.zeros(self.capacity, dtype=np.int32)
        self._order = np.zeros(self.capacity, dtype=np.int64)
        self._size = 0
        self._next_order = 0

    def __len__(self) -> int:
        return self._size

    @property
    def fill(self) -> float:
        """How full the buffer is, 0.0 to 1.0."""
        return self._size / self.capacity

    def add(self, frames: np.ndarray, labels: np.ndarray) -> int:
        """Add samples, replacing the oldest ones when full; how many of them it now holds.

        That is all of them, unless more than `capacity` were given: then only the newest
        `capacity` (the older ones would have been replaced at once). ValueError for frames
        that are not uint8 of the input shape, or labels that are not finite (N, 2).
        """
        frames, labels = _check_samples(frames, labels, self.input_shape)
        if len(frames) > self.capacity:
            frames, labels = frames[-self.capacity :], labels[-self.capacity :]
        count = len(frames)
        if count == 0:
            return 0
        old = self._size
        free = min(self.capacity - old, count)
        slots = np.arange(old, old + free)
        replace = count - free
        if replace:
            # The `replace` oldest samples; new ones were all added later, so none is picked.
            oldest = np.argpartition(self._order[:old], replace - 1)[:replace]
            slots = np.concatenate([slots, oldest])
            self.replaced_total += replace
        self._frames[slots] = frames
        self._labels[slots] = labels
        self._uses[slots] = 0
        self._order[slots] = np.arange(self._next_order, self._next_order + count)
        self._next_order += count
        self._size = old + free
        return count

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` distinct samples chosen uniformly at random: (frames, labels), copies.

        Each counts one use; those that reached `max_uses` leave the buffer. ValueError when
        fewer than `n` samples are present.
        """
        if not 0 <= n <= self._size:
            raise ValueError(f"cannot draw {n} samples from buffer {self.name} of {self._size}")
        chosen = self._rng.choice(self._size, size=n, replace=False)
        frames, labels = self._frames[chosen], self._labels[chosen]
        self._uses[chosen] += 1
        self.drawn_total += n
        used_up = chosen[self._uses[chosen] >= self.max_uses]
        if len(used_up):
            self._remove(used_up)
        return frames, labels

    def _remove(self, slots: np.ndarray) -> None:
        """Remove the samples in `slots`, moving samples from the end into the gaps."""
        size = len(self) - len(slots)
        removed = np.zeros(self._size, dtype=bool)
        removed[slots] = True
        holes = np.flatnonzero(removed[:size])
        fillers = size + np.flatnonzero(~removed[size:])
        for array in (self._frames, self._labels, self._uses, self._order):
            array[holes] = array[fillers]  # the arrival counter moves too: FIFO stays right
        self._size = size
        self.removed_total += len(slots)

    def _contents(self) -> dict[str, np.ndarray]:
        """Views of the samples present, by array name (see `_ARRAYS`)."""
        size = self._size
        return {
            "frames": self._frames[:size],
            "labels": self._labels[:size],
            "uses": self._uses[:size],
            "order": self._order[:size],
        }

    def _restore(self, archive: NpzArchive, frames: str, columns: dict[str, np.ndarray]) -> None:
        """Replace the contents with a saved copy's: the newest `capacity` samples not used up.

        `columns` holds the copy's labels, uses and order; the frames (array `frames` of
        `archive`) are streamed into this buffer's own storage, so only the samples kept are
        ever held. FileRefused when the frames are damaged, and the buffer is then empty.
        """
        arrival = np.argsort(columns["order"], kind="stable")
        kept = arrival[columns["uses"][arrival] < self.max_uses][-self.capacity :]
        positions = np.sort(kept)  # in file order, for one pass over the frames
        size = len(positions)
        self._size = 0
        archive.read_rows(frames, positions, self._frames[:size])
        self._labels[:size] = columns["labels"][positions]
        self._uses[:size] = columns["uses"][positions]
        # Slots hold samples in file order; the arrival counter keeps their age (FIFO).
        rank = np.empty(size, dtype=np.int64)
        rank[np.argsort(columns["order"][positions], kind="stable")] = np.arange(size)
        self._order[:size] = rank
        self._size = size
        self._next_order = size


def _check_samples(
    frames: np.ndarray, labels: np.ndarray, input_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    labels = np.asarray(labels, dtype=np.float32)
    if frames.dtype != np.uint8 or frames.shape[1:] != input_shape:
        raise ValueError(
            f"frames must be uint8 of shape (N, {', '.join(map(str, input_shape))}), "
            f"not {frames.dtype} {frames.shape}"
        )
    if labels.shape != (len(frames), len(OUTPUT_NAMES)):
        raise ValueError(f"labels must have shape ({len(frames)}, {len(OUTPUT_NAMES)})")
    if not np.isfinite(labels).all():
        raise ValueError("labels must be finite")
    return frames, labels


class BufferSet:
    """One `SampleBuffer` per output (OUTPUT_NAMES order), and their on-disk copy."""

    def __init__(
        self,
        capacity: int,
        input_shape: tuple[int, int, int],
        max_uses: int = 1,
        start_fill: float = 0.9,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not 0.0 < start_fill <= 1.0:
            raise ValueError(f"start_fill must be in (0, 1], not {start_fill}")
        rng = rng if rng is not None else np.random.default_rng()
        self.buffers = {
            name: SampleBuffer(name, capacity, input_shape, max_uses, rng) for name in OUTPUT_NAMES
        }
        self.capacity = int(capacity)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.max_uses = int(max_uses)
        self.start_fill = float(start_fill)
        # 0.9 x 25,000 must be 22,500 exactly, not 22,501 from a float just above it.
        self.start_count = max(1, math.ceil(round(start_fill * self.capacity, 6)))
        """Samples every buffer needs before batches are drawn."""
        self._saves = 0

    def add_shard(self, frames: np.ndarray, labels: np.ndarray, sets: np.ndarray) -> None:
        """Add each sample to the buffers of the outputs whose `sets` column is True.

        `labels` is (N, 2) in OUTPUT_NAMES order and `sets` (N, 2) bool, as in a shard.
        """
        frames, labels = _check_samples(frames, labels, self.input_shape)
        sets = np.asarray(sets)
        if sets.dtype != np.bool_ or sets.shape != (len(frames), len(OUTPUT_NAMES)):
            raise ValueError(f"sets must be bool of shape ({len(frames)}, {len(OUTPUT_NAMES)})")
        for column, buffer in enumerate(self.buffers.values()):
            member = sets[:, column]
            if member.any():
                buffer.add(frames[member], labels[member])

    @property
    def ready(self) -> bool:
        """Whether every buffer holds at least `start_fill` of its capacity."""
        return all(len(buffer) >= self.start_count for buffer in self.buffers.values())

    @property
    def fills(self) -> dict[str, float]:
        """How full each buffer is, 0.0 to 1.0, by output name."""
        return {name: buffer.fill for name, buffer in self.buffers.items()}

    def draw_batch(self, per_buffer: int) -> tuple[np.ndarray, np.ndarray]:
        """`per_buffer` random samples from every buffer, concatenated in OUTPUT_NAMES order.

        RuntimeError when not `ready`; ValueError when a buffer holds fewer than `per_buffer`
        (checked before any buffer is drawn from, so a refused batch costs no samples).
        """
        if not self.ready:
            shown = ", ".join(f"{name} {fill:.0%}" for name, fill in self.fills.items())
            raise RuntimeError(f"buffers are not ready ({shown}; need {self.start_fill:.0%} each)")
        short = [name for name, buffer in self.buffers.items() if len(buffer) < per_buffer]
        if short:
            raise ValueError(f"buffer {short[0]} holds fewer than {per_buffer} samples")
        drawn = [buffer.draw(per_buffer) for buffer in self.buffers.values()]
        return np.concatenate([f for f, _ in drawn]), np.concatenate([lab for _, lab in drawn])

    # --- the rotating on-disk copy -----------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write every buffer's samples to the older slot file in `folder`, atomically.

        Returns the file written. Its meta holds a save counter that grows across slots and
        restarts (it continues from the files present), so `load` can tell the newer one.
        """
        folder = Path(folder)
        counters = {slot: self._saved_counter(folder / slot) for slot in SLOT_NAMES}
        # Missing or unreadable slots first, then the lower counter: the older copy goes.
        target = min(SLOT_NAMES, key=lambda slot: -1 if counters[slot] is None else counters[slot])
        counter = max([self._saves, *(c for c in counters.values() if c is not None)]) + 1
        meta = {
            "format": BUFFERS_FORMAT,
            "version": BUFFERS_VERSION,
            "input_shape": list(self.input_shape),
            "capacity": self.capacity,
            "max_uses": self.max_uses,
            "saves": counter,
            "time": time.time(),
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for name, buffer in self.buffers.items():
            for key, array in buffer._contents().items():
                arrays[f"{name}_{key}"] = array
        path = folder / target
        write_atomically(path, lambda stream: np.savez(stream, **arrays))
        self._saves = counter
        return path

    def load(self, folder: Path) -> bool:
        """Replace the buffers' contents with the newest copy in `folder` that reads cleanly.

        A damaged, oversized or odd newer copy (a link, a FIFO, more than `MAX_COPY_FACTOR`
        times the capacity) is skipped with one warning in favour of the older one. A copy
        for another input shape is refused (one warning). Samples beyond capacity keep the
        newest; samples already used `max_uses` times are dropped. False when nothing loaded
        (the buffers are then empty).
        """
        folder = Path(folder)
        present = [folder / slot for slot in SLOT_NAMES if _exists(folder / slot)]
        candidates = []
        for path in present:
            try:
                candidates.append((self._slot_counter(path), path))
            except FileRefused as error:
                log.warning("buffer copy %s is unreadable: %s; %s", path, error, _next(present))
        candidates.sort(reverse=True)
        for rank, (counter, path) in enumerate(candidates):
            try:
                self._read_copy(path)
            except _OtherShape as error:
                log.warning(
                    "buffer copy %s holds frames of shape %s, not this model line's %s; "
                    "starting empty",
                    path,
                    error.shape,
                    self.input_shape,
                )
                return False
            except FileRefused as error:
                self._empty()  # nothing of a copy that failed half way stays behind
                fallback = _next(present) if rank + 1 < len(candidates) else "starting empty"
                log.warning("buffer copy %s is unreadable: %s; %s", path, error, fallback)
                continue
            self._saves = max(self._saves, counter)
            return True
        return False

    def _empty(self) -> None:
        for buffer in self.buffers.values():
            buffer._size = 0
            buffer._next_order = 0

    def _open_copy(self, path: Path) -> AbstractContextManager[NpzArchive]:
        """`open_npz` for a copy: at most what `MAX_COPY_FACTOR` x capacity samples per
        buffer take, and (written uncompressed) no more data than the file holds."""
        sample = math.prod(self.input_shape) + sum(
            dtype.itemsize * (len(OUTPUT_NAMES) if key == "labels" else 1)
            for key, dtype in _ARRAYS.items()
            if key != "frames"
        )
        limit = MAX_COPY_FACTOR * self.capacity * len(OUTPUT_NAMES) * sample + _COPY_OVERHEAD
        try:
            size = path.lstat().st_size
        except OSError as error:
            raise FileRefused(f"it cannot be read ({error.strerror})") from None
        return open_npz(path, limit, min(size, limit), max_arrays=_COPY_ENTRIES)

    def _slot_counter(self, path: Path) -> int:
        """The save counter in the meta of the copy `path`; FileRefused when unreadable."""
        with self._open_copy(path) as archive:
            return _read_meta(archive)["saves"]

    def _saved_counter(self, path: Path) -> int | None:
        """The save counter of the copy `path`; None when it is missing or unreadable."""
        if not _exists(path):
            return None
        try:
            return self._slot_counter(path)
        except FileRefused:
            return None

    def _read_copy(self, path: Path) -> None:
        """Fill every buffer from the copy `path`, its arrays checked from their headers first.

        FileRefused when it is damaged or too large; `_OtherShape` (before anything is read
        but its meta) when it holds frames of another shape than this line's.
        """
        outputs = len(OUTPUT_NAMES)
        limit = MAX_COPY_FACTOR * self.capacity
        with self._open_copy(path) as archive:
            meta = _read_meta(archive)
            shape = tuple(meta["input_shape"])
            if shape != self.input_shape:
                raise _OtherShape(shape)
            expected = {"meta", *(f"{name}_{key}" for name in OUTPUT_NAMES for key in _ARRAYS)}
            if set(archive.headers) != expected:
                raise FileRefused("its arrays are not one set per output")
            for name in OUTPUT_NAMES:
                headers = {key: archive.headers[f"{name}_{key}"] for key in _ARRAYS}
                count = headers["frames"].shape[0] if headers["frames"].shape else -1
                shapes = {
                    "frames": (count, *shape),
                    "labels": (count, outputs),
                    "uses": (count,),
                    "order": (count,),
                }
                for key, dtype in _ARRAYS.items():
                    if headers[key].dtype != dtype or headers[key].shape != shapes[key]:
                        raise FileRefused(f"its {name}_{key} is not {dtype} {shapes[key]}")
                if count > limit:
                    raise FileRefused(
                        f"its {name} buffer holds {count} samples, more than {MAX_COPY_FACTOR} "
                        f"x this buffer's {self.capacity}"
                    )
            for name, buffer in self.buffers.items():
                columns = {key: archive.read(f"{name}_{key}") for key in _ARRAYS if key != "frames"}
                if not np.isfinite(columns["labels"]).all():
                    raise FileRefused(f"its {name} labels include NaN or infinity")
                buffer._restore(archive, f"{name}_frames", columns)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _next(present: list[Path]) -> str:
    """What `load` does after a damaged copy: where it goes next."""
    return "falling back to the other copy" if len(present) > 1 else "starting empty"


_COPY_ENTRIES = 1 + len(OUTPUT_NAMES) * len(_ARRAYS)
"""Zip entries of a copy: its meta and every buffer's arrays."""


def _read_meta(archive: NpzArchive) -> dict[str, Any]:
    header = archive.headers.get("meta")
    if header is None or header.dtype.kind != "U" or header.shape != ():
        raise FileRefused("it has no meta text")
    if header.dtype.itemsize > 4 * _META_CHARS:
        raise FileRefused(f"its meta is longer than {_META_CHARS} characters")
    try:
        meta = json.loads(str(archive.read("meta")[()]))
    except (ValueError, RecursionError) as error:
        raise FileRefused(f"its meta is not JSON ({one_line(error, 60)})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUFFERS_FORMAT:
        raise FileRefused(f"it is not a {BUFFERS_FORMAT} file")
    if meta.get("version") != BUFFERS_VERSION:
        raise FileRefused(f"it is {BUFFERS_FORMAT} version {quoted(meta.get('version'))}, not 1")
    shape, saves = meta.get("input_shape"), meta.get("saves")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int for d in shape)):
        raise FileRefused("its meta input_shape is not [H, W, 3]")
    if type(saves) is not int:
        raise FileRefused("its meta save counter is not a whole number")
    return meta


class _OtherShape(Exception):
    """A sound copy, but of frames of another shape."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(shape)
        self.shape = shape
