"""One place where helper threads say they stopped working, and the session hears it.

Every thread a drive depends on (capture, the controller process's reader, hotkeys, the
checkpoint loader) reports the error that ended it to the session's `Failures`, instead of
leaving it in an attribute for someone to poll. The drive loop looks at `first()` once a tick
(one uncontended lock) and stops on the first failure, naming the part; the parts' own `error`
properties read the same board, so there is exactly one record of what went wrong.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class PartFailure:
    """A helper thread that ended with an error."""

    part: str
    """Which part: "capture", "controller", "hotkeys", "checkpoint loader", ..."""
    error: BaseException


class Failures:
    """The failures of a session's helper threads, first one first; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[PartFailure] = []

    def report(self, part: str, error: BaseException) -> None:
        """`part`'s thread stopped working because of `error` (a part reports once)."""
        with self._lock:
            if all(failure.part != part for failure in self._failures):
                self._failures.append(PartFailure(part, error))

    def first(self) -> PartFailure | None:
        """The earliest failure reported, or None while every part works."""
        with self._lock:
            return self._failures[0] if self._failures else None

    def of(self, part: str) -> BaseException | None:
        """The error `part` reported, or None."""
        with self._lock:
            return next((f.error for f in self._failures if f.part == part), None)
