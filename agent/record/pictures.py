"""The pictures a drive shows the world, drawn once for everyone who shows them.

A recording, the live MJPEG view and the RTMP stream all show the same pictures (the stream
layout, or the game with the HUD). One drawing thread makes each picture once, on the video
clock, and puts it into a `PictureFeed`; each consumer takes the newest one when it is ready
for it. A consumer that is slow misses pictures itself and never delays the drawing, the drive
loop or another consumer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from agent.runtime.slot import Slot


@dataclass(frozen=True)
class Picture:
    """One drawn picture; nobody changes `image` after it is put into a feed."""

    image: np.ndarray
    """BGR, uint8, (height, width, 3)."""
    index: int
    """The video clock's slot it was drawn for (0 at the clock's start): a consumer that sees
    index 7 after index 4 knows it missed 5 and 6 (a recording shows 7 three times)."""
    frame_seq: int
    """Capture sequence number of the game frame in the picture (0: none yet)."""
    drawn_at: float
    """Clock time (monotonic seconds) it was drawn."""


class PictureFeed:
    """The newest picture of one kind ("layout" or "hud"), and whether anyone wants them.

    The drawing thread draws a kind only while somebody watches it (`watch()`), so a live view
    nobody has open costs the car nothing.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._slot: Slot[Picture] = Slot()
        self._lock = threading.Lock()
        self._watchers = 0
        self._every_slot = 0

    @contextmanager
    def watch(self, every_slot: bool = False) -> Iterator[PictureFeed]:
        """Want pictures of this kind while the block runs. `every_slot`: a picture for every
        slot of the video clock (a video stream), never fewer while the model sets the pace
        (agent/record/watched.py)."""
        with self._lock:
            self._watchers += 1
            self._every_slot += every_slot
        try:
            yield self
        finally:
            with self._lock:
                self._watchers -= 1
                self._every_slot -= every_slot

    @property
    def wanted(self) -> bool:
        with self._lock:
            return self._watchers > 0

    @property
    def wants_every_slot(self) -> bool:
        with self._lock:
            return self._every_slot > 0

    def put(self, picture: Picture) -> int:
        return self._slot.put(picture)

    def get(self) -> tuple[Picture | None, int]:
        """The newest picture and its sequence number (0 and None before the first)."""
        return self._slot.get()

    def wait_newer(self, seq: int, timeout: float) -> tuple[Picture | None, int]:
        """The newest picture once one newer than `seq` is put, or after `timeout` seconds."""
        return self._slot.wait_newer(seq, timeout)
