"""A clock the test moves by hand (agent.runtime.clock.Clock)."""

from __future__ import annotations

import threading


class FakeClock:
    """Time stands still until `advance`; waits on it end when enough fake time has passed.

    Threads that `sleep` or `wait` on it block (really) until the test advances the clock past
    their deadline, or their event is set.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._changed = threading.Condition()

    def now(self) -> float:
        with self._changed:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every waiter whose deadline has come."""
        with self._changed:
            self._now += seconds
            self._changed.notify_all()

    def sleep(self, seconds: float) -> None:
        with self._changed:
            deadline = self._now + seconds
            self._changed.wait_for(lambda: self._now >= deadline)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._changed:
            deadline = self._now + timeout
        while not event.is_set():
            with self._changed:
                if self._now >= deadline:
                    return False
                # An event set elsewhere does not notify this condition: look again soon.
                self._changed.wait(0.005)
        return True
