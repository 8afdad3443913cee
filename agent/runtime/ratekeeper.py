"""A monotonic rate keeper: holds a loop at its rate and counts the ticks it ran late."""

from __future__ import annotations

import threading

from agent.runtime.clock import SYSTEM_CLOCK, Clock


class RateKeeper:
    """Call `keep_time()` once per iteration; it sleeps until the next tick is due.

    Ticks are scheduled on a fixed grid (start + n / hz), so sleeping never accumulates drift;
    when an iteration overruns by more than one period the grid restarts from now instead of
    firing a burst of catch-up ticks, and the tick is counted in `lagged`. The grid starts at
    construction and is kept on `clock`.
    """

    def __init__(self, hz: float, clock: Clock = SYSTEM_CLOCK) -> None:
        if not hz > 0:  # NaN too
            raise ValueError(f"rate must be positive, got {hz}")
        self.period = 1.0 / hz
        self.ticks = 0
        self.lagged = 0
        self._clock = clock
        self._next = clock.now() + self.period

    def keep_time(self, wake: threading.Event | None = None) -> bool:
        """Sleep until the next tick; returns True when this tick came late.

        With `wake`, setting that event ends the sleep at once (the caller clears it): the
        tick happens now and the grid restarts from now, so the next one is a full period later.
        """
        self.ticks += 1
        now = self._clock.now()
        remaining = self._next - now
        if remaining > 0:
            if wake is None:
                self._clock.sleep(remaining)
            elif self._clock.wait(wake, remaining):
                self._next = self._clock.now() + self.period
                return False
            self._next += self.period
            return False
        late = -remaining > self.period
        if late:
            self.lagged += 1
            self._next = now + self.period
        else:
            self._next += self.period
        return late
