"""The clock every timing rule reads, so tests can control time instead of sleeping.

Parts that decide by elapsed time (the dead-man, the rate keeper, unstuck's window, the swap
policy's wait, the recorder's video clock, the capture's schedule) take a `Clock` and read
`now()` from it; those that wait do so through `sleep` and `wait`. In production that is
`SYSTEM_CLOCK` (time.monotonic and real waits); tests pass a fake one they advance by hand
(tests/helpers/clock.py), so "after 1.0 s the controls go neutral" is checked at exactly 0.99 s
and 1.0 s, not with a sleep and a margin.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds, and waits measured on the same clock."""

    def now(self) -> float:
        """Seconds on a monotonic clock (only differences mean anything)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until `event` is set or `timeout` seconds pass on this clock (None: no time
        limit); True when set."""
        ...


class SystemClock:
    """The real clock: time.monotonic and real waits."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(None if timeout is None else max(0.0, timeout))


SYSTEM_CLOCK: Clock = SystemClock()
