"""A clock the test moves by hand (agent.runtime.clock.Clock)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

SETTLE_TIMEOUT = 5.0
"""Real seconds `advance` and `settle` give the clock's threads to come back to it."""
EVENT_POLL = 0.001
"""Real seconds between looks at a waiter's event: setting an Event notifies nobody else."""


@dataclass(frozen=True)
class _Parked:
    """Where a thread waits on the clock."""

    deadline: float
    """Fake time its wait ends (math.inf: only its event ends it)."""
    event: threading.Event | None

    def due(self, now: float) -> bool:
        """The wait has ended, or is about to: its thread is not at rest."""
        return self.deadline <= now or (self.event is not None and self.event.is_set())


class FakeClock:
    """Time stands still until `advance`; waits on it end when enough fake time has passed.

    Threads that `sleep` or `wait` on it block (really) until the test advances the clock past
    their deadline, or their event is set. `advance` moves time one waiter's deadline at a time
    and after each step waits until every thread that waits on this clock is waiting on it
    again (or has ended): when it returns, everything that was due by the new time has
    happened, each at the fake time it was due. `settle` does the same without moving time (say
    after `set()` on a controller wakes its thread); `jump` moves time without waiting for
    anyone (a stall). A thread that stays busy elsewhere (a lock, a pipe) for `settle_timeout`
    real seconds fails the test with its name.

    A thread is known to the clock from its first wait: after starting a part, call
    `settle(waiters=n)` before moving time, or its first schedule may start late.

    With `waits_advance`, a wait that its event does not end moves time to its deadline itself:
    for code that runs on the test's own thread (a rate keeper in a loop); nothing else may
    wait on such a clock.
    """

    def __init__(
        self,
        start: float = 1000.0,
        *,
        waits_advance: bool = False,
        settle_timeout: float = SETTLE_TIMEOUT,
    ) -> None:
        self._now = start
        self._changed = threading.Condition()
        self._waits_advance = waits_advance
        self._settle_timeout = settle_timeout
        self._threads: dict[threading.Thread, _Parked | None] = {}
        """Every thread that has waited on this clock: where it waits now (None: running)."""

    def now(self) -> float:
        with self._changed:
            return self._now

    def sleep(self, seconds: float) -> None:
        self._wait(None, seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return self._wait(event, timeout)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, stopping at every waiter's deadline on the way."""
        if not seconds >= 0:
            raise ValueError(f"time only moves forward, not by {seconds}")
        if self._waits_advance:
            self._move_to(self.now() + seconds)
            return
        self.settle()
        with self._changed:
            target = self._now + seconds
        while True:
            with self._changed:
                deadlines = [p.deadline for p in self._threads.values() if p is not None]
                step = min([d for d in deadlines if d <= target], default=target)
            self._move_to(step)
            self.settle()
            if step >= target:
                return

    def jump(self, seconds: float) -> None:
        """Move time forward by `seconds` at once and wait for nobody: what a thread that was
        busy (stuck, slow, not scheduled) finds when it next looks; every wait due by then ends
        at the new time."""
        if not seconds >= 0:
            raise ValueError(f"time only moves forward, not by {seconds}")
        self._move_to(self.now() + seconds)

    def settle(self, waiters: int = 0) -> None:
        """Wait (really) until at least `waiters` threads wait on this clock and none of them
        is due to wake; AssertionError naming the threads still busy after `settle_timeout`."""
        give_up = time.monotonic() + self._settle_timeout
        with self._changed:
            while True:
                busy, parked = self._busy()
                if not busy and parked >= waiters:
                    return
                left = give_up - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"threads did not come back to the fake clock within "
                        f"{self._settle_timeout} s: busy {busy}, {parked} of {waiters} waiting"
                    )
                self._changed.wait(min(left, EVENT_POLL))

    def _busy(self) -> tuple[list[str], int]:
        """Names of the clock's threads not at rest, and how many are waiting; lock held."""
        busy, parked = [], 0
        for thread, where in list(self._threads.items()):
            if not thread.is_alive():
                del self._threads[thread]
            elif where is None or where.due(self._now):
                if thread is not threading.current_thread():
                    busy.append(thread.name)
            else:
                parked += 1
        return busy, parked

    def _move_to(self, when: float) -> None:
        with self._changed:
            self._now = max(self._now, when)
            self._changed.notify_all()

    def _wait(self, event: threading.Event | None, timeout: float | None) -> bool:
        if event is not None and event.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        if self._waits_advance:
            if timeout is None:
                raise RuntimeError("an endless wait on the test's own thread would never end")
            self._move_to(self.now() + timeout)
            return event is not None and event.is_set()
        me = threading.current_thread()
        with self._changed:
            # Strictly later than now, even when now + timeout rounds to now: else a waiter
            # that asks for a tiny remainder would wake without time moving, over and over.
            deadline = (
                math.inf
                if timeout is None
                else max(self._now + timeout, math.nextafter(self._now, math.inf))
            )
            self._threads[me] = _Parked(deadline, event)
            self._changed.notify_all()
            try:
                while True:
                    if event is not None and event.is_set():
                        return True
                    if self._now >= deadline:
                        return False
                    self._changed.wait(EVENT_POLL if event is not None else None)
            finally:
                self._threads[me] = None
                self._changed.notify_all()
