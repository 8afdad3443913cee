"""The dead-man rule every controller backend follows, whatever its driver.

A command is live for `hold` seconds after it was given. When no newer command arrives in that
time (the drive loop hung, a slow disk stalled the process, a thread deadlocked), the backend's
own thread puts the controls back to neutral by itself: keys up, pedals released, stick centred.
The drive loop is not involved, so a stalled loop cannot keep the car going.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

DEFAULT_HOLD = 1.0
"""Seconds a command stays applied without a newer one (config `controller.hold`). Long enough
for a slow model between predictions (model_0005 on a CPU: about 0.5 s), short enough that a
hung agent lets go of the car within about a second."""


class DeadMan:
    """Tracks how old the applied command is; not thread-safe (the backend's lock guards it)."""

    def __init__(self, hold: float, backend: str) -> None:
        if not (math.isfinite(hold) and hold > 0):
            raise ValueError(f"hold must be a positive number of seconds, got {hold!r}")
        self.hold = hold
        self._backend = backend
        self._armed_at: float | None = None
        self.releases = 0
        """How many times a command expired and the controls went neutral by themselves."""

    def arm(self, now: float) -> None:
        """A non-neutral command was applied at `now` (monotonic seconds)."""
        self._armed_at = now

    def disarm(self) -> None:
        """The controls are neutral: there is nothing to let go of."""
        self._armed_at = None

    def seconds_left(self, now: float) -> float | None:
        """Time until the applied command expires; None when nothing is applied."""
        if self._armed_at is None:
            return None
        return self.hold - (now - self._armed_at)

    def expired(self, now: float) -> bool:
        left = self.seconds_left(now)
        return left is not None and left <= 0.0

    def release(self) -> None:
        """Count and report one expiry; the caller has just made the controls neutral."""
        self._armed_at = None
        self.releases += 1
        log.warning(
            "%s controller: no new command for %.1f s; controls neutral until the next one",
            self._backend, self.hold,
        )  # fmt: skip
