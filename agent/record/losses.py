"""The trainer's loss curve, read from the checkpoints it publishes into the model store.

`charles train` writes each checkpoint's batch count and training loss into its manifest, so a
recorder needs no connection to the trainer: the manifests in `<store>/<line>/` are the curve.
Only manifests are read (never weights), each version once, at most every `POLL_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from agent.checkpoints.resolve import versions
from agent.errors import CharlesError

POLL_SECONDS = 5.0


class LossCurve:
    """(batches, total loss) of every published version of one line, oldest first.

    Safe to share between threads (a recording, the live view's drawing and its overlay read
    one curve)."""

    def __init__(self, store: Path, line: str) -> None:
        self.store = Path(store)
        self.line = line
        self._points: dict[str, tuple[int, float]] = {}
        self._next_poll = 0.0
        self._lock = threading.Lock()

    def points(self, now: float | None = None) -> list[tuple[int, float]]:
        """The curve, refreshed from the store when `POLL_SECONDS` have passed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now >= self._next_poll:
                self._next_poll = now + POLL_SECONDS
                self._refresh()
            return sorted(self._points.values())

    def _refresh(self) -> None:
        try:
            checkpoints = versions(self.store, self.line)
        except CharlesError:
            return  # an unreadable store is the watcher's to report; the curve just stays
        for checkpoint in checkpoints:
            manifest = checkpoint.manifest
            loss = manifest.loss_by_name.get("total")
            if loss is not None and manifest.version not in self._points:
                self._points[manifest.version] = (manifest.batches, loss)
