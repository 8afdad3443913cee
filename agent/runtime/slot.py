"""The newest-value slot: how slow or bursty parts meet the drive loop.

`put` overwrites (a producer never waits), `get` never blocks and returns the newest value with
its sequence number, so a consumer can tell a new value from one it has already used. Stale
values are dropped, never queued.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Slot(Generic[T]):
    """Holds the newest value put into it; safe to share between threads."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._value: T | None = None
        self._seq = 0

    def put(self, value: T) -> int:
        """Replace the value; returns its sequence number (1, 2, ...)."""
        with self._condition:
            self._value = value
            self._seq += 1
            self._condition.notify_all()
            return self._seq

    def get(self) -> tuple[T | None, int]:
        """The newest value and its sequence number; (None, 0) before the first put."""
        with self._condition:
            return self._value, self._seq

    def wait_newer(self, seq: int, timeout: float) -> tuple[T | None, int]:
        """Like `get`, but waits up to `timeout` seconds for a value newer than `seq`."""
        with self._condition:
            self._condition.wait_for(lambda: self._seq > seq, timeout=timeout)
            return self._value, self._seq
