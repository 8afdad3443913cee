"""The overlay's updates: the drive's status as one JSON event, at most four times a second.

A thread of its own looks at the status slot every `EVENT_PERIOD` seconds of the server's
clock and hands the event over only when something the page shows changed (a new snapshot,
the rates, the loss curve). It polls instead of waiting on the slot because the drive loop
puts a snapshot every tick (30-60 a second): the limit of four a second is the pace anyway,
and a wait on the clock alone is what lets tests move time by hand. The rates are measured on
the same clock (agent.drive.console.RateMeter), so they fall to zero when the loop stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from agent.drive.console import RateMeter, Rates
from agent.drive.status import DriveStatus
from agent.errors import log_failure
from agent.live.documents import overlay_event, to_json
from agent.runtime.clock import Clock
from agent.runtime.slot import Slot
from agent.runtime.threads import lower_this_threads_priority
from agent.types import Tick

log = logging.getLogger(__name__)

EVENT_PERIOD = 0.25
"""Seconds between looks at the status: at most four events a second."""
STOP_SECONDS = 5.0
"""Real seconds `stop` waits for the thread (one look, a call to `losses`)."""

LossCurve = Callable[[], Sequence[tuple[int, float]]]


class OverlayPublisher:
    """Makes the overlay event and hands its JSON text to `deliver` when it changed.

    `deliver` runs on this publisher's thread and must not block (the server schedules the
    text onto its event loop). `losses` is called once a look, from this thread.
    """

    def __init__(
        self,
        status: Slot[DriveStatus],
        ticks: Slot[Tick] | None,
        losses: LossCurve | None,
        deliver: Callable[[str], None],
        clock: Clock,
        nice: int = 0,
    ) -> None:
        self._status = status
        self._ticks = ticks
        self._losses = losses
        self._deliver = deliver
        self._clock = clock
        self._nice = nice
        self._meter = RateMeter(clock)
        self._last_text: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live overlay", daemon=True)
        self.rates = Rates(0.0, 0.0)
        """The newest rates (a frozen value: read it from any thread)."""
        self.published = 0
        """Events handed to `deliver` so far."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(STOP_SECONDS)

    def _run(self) -> None:
        lower_this_threads_priority(self._nice)
        try:
            while True:
                self._look()
                if self._clock.wait(self._stopping, EVENT_PERIOD):
                    return
        except Exception as error:  # a bug (or a broken loss curve): the page stops updating
            log_failure(log, "the live overlay's updates stopped", error)

    def _look(self) -> None:
        status, seq = self._status.get()
        self.rates = self._meter.update(status)
        tick = self._ticks.get()[0] if self._ticks is not None else None
        losses = self._losses() if self._losses is not None else ()
        text = to_json(overlay_event(status, seq, tick, self.rates, losses))
        if text != self._last_text:
            self._last_text = text
            self.published += 1
            self._deliver(text)
