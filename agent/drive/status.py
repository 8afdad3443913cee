"""The drive session's status: one immutable snapshot per tick, for everyone who watches.

The drive loop builds a `DriveStatus` at the end of every tick and puts it into a slot. The
console, the recorder's HUD and the end-of-run summary (and next, a live view) read only that
slot: none of them touches the loop's counters, the predictor or the hot swap's history while
the threads that own them are changing them. A snapshot holds only numbers, strings and tuples
of frozen records, so handing it to another thread shares nothing that can change.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.checkpoints.watcher import Rejection
from agent.drive.hotswap import Swap

STARTING = "starting"
"""The state before the loop's first tick."""


@dataclass(frozen=True)
class DriveStatus:
    """What the session is doing at the end of one tick of the drive loop."""

    state: str
    """"driving", "paused", "waiting for window", "unstuck" (agent.drive.loop), or "starting"."""
    model: str
    """Display name of the model driving now (after any swaps)."""
    backend: str
    """inference.backend the model runs on."""
    version: str | None
    """The store version driving (e.g. "v0003"); None for fresh weights."""
    batches: int | None
    """Batches the driving checkpoint was trained for; None for fresh weights."""
    at: float
    """Clock time (monotonic seconds) of the tick."""
    frames: int
    """Frames the capture has put so far (its slot's sequence number)."""
    ticks: int
    predictions: int
    skipped: int
    """Frames captured while a prediction ran, never predicted on (a newer one was)."""
    nonfinite: int
    unstucks: int
    swaps: tuple[Swap, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    loads: tuple[tuple[float, float], ...] = ()
    """(start, end) clock times of every background checkpoint load, accepted or not."""
