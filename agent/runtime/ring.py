"""A fixed-size record of the newest float measurements, its memory taken once at the start.

A drive keeps per-prediction timings (capture to command, predict, preprocess, grab) for its
end-of-run report. A `deque(maxlen=...)` of Python floats costs ~32 bytes an entry and grows
until it is full: at 30 a second, six of them grew the drive's memory ~20 MB an hour for two
hours, which a soak cannot tell from a leak. Here every entry is 8 bytes of one NumPy array,
written (so its pages are really taken) when the ring is made: memory is flat from the start.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

KEPT_MEASUREMENTS = 200_000
"""Entries a ring keeps by default: ~1.9 hours at 30 a second, 1.6 MB."""


class FloatRing:
    """The newest `capacity` floats appended, oldest first when read.

    One thread appends; a reader from another thread gets a consistent copy only when the
    writer is paused or has ended (the end-of-run report), or under the writer's own lock.
    """

    def __init__(self, capacity: int = KEPT_MEASUREMENTS) -> None:
        if capacity < 1:
            raise ValueError(f"a ring needs room for at least one value, not {capacity}")
        # np.full writes every page now; np.empty/zeros would let the OS hand them out lazily,
        # which shows up as growth while the ring fills.
        self._values = np.full(capacity, np.nan, dtype=np.float64)
        self._appended = 0

    @property
    def capacity(self) -> int:
        return len(self._values)

    def append(self, value: float) -> None:
        self._values[self._appended % len(self._values)] = value
        self._appended += 1

    def __len__(self) -> int:
        return min(self._appended, len(self._values))

    def array(self) -> np.ndarray:
        """A copy of the kept values, oldest first."""
        capacity = len(self._values)
        if self._appended <= capacity:
            return self._values[: self._appended].copy()
        start = self._appended % capacity
        return np.concatenate((self._values[start:], self._values[:start]))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = self.array()
        return values if dtype is None else values.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[float]:
        return iter(self.array().tolist())

    def __getitem__(self, index: int) -> float:
        """The value at `index` of the kept values, oldest first (negative from the newest)."""
        kept = len(self)
        if not -kept <= index < kept:
            raise IndexError(f"index {index} out of a ring holding {kept}")
        oldest = self._appended - kept
        return float(self._values[(oldest + index % kept) % len(self._values)])
