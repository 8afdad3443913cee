"""How long to wait before connecting again to an ingest that went away.

Exponential backoff: 1, 2, 4, 8, 16, 30, 30, ... seconds. A short outage (an ingest restarting)
is bridged within a second or two; one that lasts does not have the car knocking every second
on a server that refuses it. A connection that stayed up for `healthy_after` seconds shows the
ingest works again, so the next outage starts from the shortest wait; one that drops at once
(an ingest that accepts and then refuses the stream) keeps the waits growing.
"""

from __future__ import annotations

FIRST_WAIT = 1.0
"""Seconds before the first reconnection attempt."""
LONGEST_WAIT = 30.0
"""The wait stops growing here (seconds)."""
HEALTHY_AFTER = 10.0
"""Seconds a connection must last for the waits to start again from FIRST_WAIT."""


class Backoff:
    """The waits between attempts; `next_wait()` after a failure, `connected_for()` after a
    connection ends."""

    def __init__(
        self,
        first: float = FIRST_WAIT,
        longest: float = LONGEST_WAIT,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        if not 0 < first <= longest:
            raise ValueError(f"backoff waits need 0 < first <= longest, not {first}, {longest}")
        self.first, self.longest, self.healthy_after = first, longest, healthy_after
        self.failures = 0
        """Failures since the last healthy connection."""

    def next_wait(self) -> float:
        """Seconds to wait after one more failure."""
        wait = min(self.longest, self.first * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return wait

    def connected_for(self, seconds: float) -> None:
        """A connection ended after `seconds`: when that was long enough, start afresh."""
        if seconds >= self.healthy_after:
            self.failures = 0
