"""The trainer's loss curve, read from the checkpoints it publishes into the model store.

`charles train` writes each checkpoint's batch count and training loss into its manifest, so a
recorder needs no connection to the trainer: the manifests in `<store>/<line>/` are the curve.
Only manifests are read (never weights), each version once, at most every `POLL_SECONDS`.

A trainer publishing every 30 s adds 2,880 points a day, and the curve is drawn into every
picture: past `MAX_POINTS` every second point of the older half goes, so a week-long drive
draws at most `MAX_POINTS` with its whole history, finer the more recent.
"""

from __future__ import annotations

import bisect
import threading
import time
from pathlib import Path

from agent.checkpoints.manifest import version_number
from agent.checkpoints.resolve import versions
from agent.errors import CharlesError

POLL_SECONDS = 5.0
MAX_POINTS = 600


class LossCurve:
    """(batches, total loss) of the published versions of one line, by batches.

    Safe to share between threads (a recording, the live view's drawing and its overlay read
    one curve)."""

    def __init__(self, store: Path, line: str) -> None:
        self.store = Path(store)
        self.line = line
        self._points: list[tuple[int, float]] = []
        self._curve: tuple[tuple[int, float], ...] = ()
        self._newest = 0
        """Number of the newest version taken: each is taken once, and none older after it."""
        self._next_poll = 0.0
        self._lock = threading.Lock()

    def points(self, now: float | None = None) -> tuple[tuple[int, float], ...]:
        """The curve, refreshed from the store when `POLL_SECONDS` have passed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now >= self._next_poll:
                self._next_poll = now + POLL_SECONDS
                if self._refresh():
                    self._curve = tuple(self._points)
            return self._curve

    def _refresh(self) -> bool:
        """Take versions newer than the newest taken; True when the curve changed."""
        try:
            checkpoints = versions(self.store, self.line)
        except CharlesError:
            return False  # an unreadable store is the watcher's to report; the curve just stays
        changed = False
        for checkpoint in checkpoints:
            manifest = checkpoint.manifest
            number = version_number(manifest.version) or 0
            loss = manifest.loss_by_name.get("total")
            if number <= self._newest or loss is None:
                continue
            self._newest = number
            bisect.insort(self._points, (manifest.batches, loss))
            changed = True
        if len(self._points) > MAX_POINTS:
            half = len(self._points) // 2
            self._points = self._points[:half:2] + self._points[half:]
        return changed
