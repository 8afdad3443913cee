"""The video clock: slot k of a recording is wall time start + k / fps, whatever the agent does.

The agent captures at its own pace (slower than the video when the game or capture stalls,
faster when capture.fps is above record.fps). Each slot shows the newest captured frame: a
frame shown in two slots is a *repeat*, a frame captured between two slots and never shown is
*left out*. Both are counted, so a viewer knows how much of what they see is true motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class VideoClock:
    """Which slots are due at a given time; every slot is handed out exactly once."""

    def __init__(self, fps: float, start: float) -> None:
        if not fps > 0:
            raise ValueError(f"a video needs a positive frame rate, not {fps}")
        self.fps = fps
        self.start = start
        self.slots = 0
        """Slots handed out so far (the next slot's index)."""

    def next_at(self) -> float:
        """Wall time (monotonic) of the next slot."""
        return self.start + self.slots / self.fps

    def due(self, now: float) -> range:
        """The slots whose time has come by `now` and were not handed out yet (usually one;
        several after a stall, so the video's length stays true)."""
        last = math.floor((now - self.start) * self.fps + 1e-9)
        slots = range(self.slots, max(self.slots, last + 1))
        self.slots = slots.stop
        return slots

    @property
    def seconds(self) -> float:
        """Length of the video so far."""
        return self.slots / self.fps


@dataclass
class ShownFrames:
    """Counts repeats and left-out frames from the sequence numbers of the frames shown."""

    shown: int = 0
    """Slots filled with a captured frame."""
    repeated: int = 0
    """Slots that showed the same captured frame as the slot before."""
    left_out: int = 0
    """Captured frames never shown (captured faster than the video, or while it stalled)."""
    last_seq: int | None = None
    """The captured frame shown last."""

    def show(self, seq: int, slots: int) -> None:
        """The captured frame `seq` fills `slots` consecutive slots."""
        if slots <= 0:
            return
        self.shown += slots
        if self.last_seq is None:
            self.repeated += slots - 1
        elif seq == self.last_seq:
            self.repeated += slots
        else:
            self.repeated += slots - 1
            self.left_out += max(0, seq - self.last_seq - 1)
        self.last_seq = seq
