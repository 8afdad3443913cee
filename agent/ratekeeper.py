"""A monotonic rate keeper: holds a loop at its rate and counts the ticks it ran late."""

from __future__ import annotations

import time


class RateKeeper:
    """Call `keep_time()` once per iteration; it sleeps until the next tick is due.

    Ticks are scheduled on a fixed grid (start + n / hz), so sleeping never accumulates drift;
    when an iteration overruns by more than one period the grid restarts from now instead of
    firing a burst of catch-up ticks, and the tick is counted in `lagged`.
    """

    def __init__(self, hz: float) -> None:
        if not hz > 0:  # NaN too
            raise ValueError(f"rate must be positive, got {hz}")
        self.period = 1.0 / hz
        self.ticks = 0
        self.lagged = 0
        self._next = time.monotonic() + self.period

    def keep_time(self) -> bool:
        """Sleep until the next tick; returns True when this tick came late."""
        self.ticks += 1
        now = time.monotonic()
        remaining = self._next - now
        if remaining > 0:
            time.sleep(remaining)
            self._next += self.period
            return False
        late = -remaining > self.period
        if late:
            self.lagged += 1
            self._next = now + self.period
        else:
            self._next += self.period
        return late
