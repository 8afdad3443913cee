"""Unstuck: noticing from the pixels that the car stands still, and getting it going again.

The 2017 "Python plays GTA V" agent watched how much the picture changed and, when it had hardly
changed for a while, reversed out. Here the measure is a small grey thumbnail of each captured
frame: the car is stuck when, over `window` seconds of driving, no thumbnail differs from the
newest by `min_change` grey levels per pixel on average. Comparing against the newest (not
frame to frame) makes a car crawling slowly count as moving: its picture drifts far over the
window even when two successive frames look alike.

What must never count as stuck resets the window: the agent paused, the window lost or waiting,
and a paused game (the bundled game says so in its frame records); a recovery resets it too, so
the next one needs a whole window of standing still again.

Recovery is a short script the drive loop sends instead of predictions: release everything, then
either ask the game to put the car back on the track (the bundled game's reset hook) or back up
with the brake held (GTA V and the bundled game reverse on the brake) and the wheels turned the
other way, then drive on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.config import UnstuckConfig
from agent.types import NEUTRAL, ControllerState

THUMBNAIL_CELLS = (18, 32)
"""Rows and columns of the grey thumbnail: coarse enough to ignore noise, cheap (~0.1 ms)."""


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A coarse grey picture of `image` (H x W x 3 uint8) as float32, by sampling a grid."""
    height, width = image.shape[:2]
    rows = np.linspace(0, height - 1, THUMBNAIL_CELLS[0]).astype(np.intp)
    columns = np.linspace(0, width - 1, THUMBNAIL_CELLS[1]).astype(np.intp)
    cells = image[rows][:, columns].astype(np.float32)
    return cells.mean(axis=2)


class StuckDetector:
    """Says when the picture has stood still for a whole window of driving."""

    def __init__(self, window: float, min_change: float) -> None:
        self.window = window
        self.min_change = min_change
        self._recent: deque[tuple[float, np.ndarray]] = deque()

    def reset(self) -> None:
        """Forget what was seen: a pause, a lost window or a recovery starts a new window."""
        self._recent.clear()

    def observe(self, image: np.ndarray, now: float) -> bool:
        """Take the newest captured frame; True when the car counts as stuck now."""
        newest = thumbnail(image)
        # Frames older than the window are dropped, but the newest older one is kept so the
        # window is known to be covered.
        while len(self._recent) >= 2 and self._recent[1][0] <= now - self.window:
            self._recent.popleft()
        self._recent.append((now, newest))
        if self._recent[0][0] > now - self.window:
            return False  # not a whole window of driving yet
        largest = max(float(np.abs(old - newest).mean()) for _, old in self._recent)
        return largest < self.min_change


@dataclass(frozen=True)
class RecoveryPlan:
    """The timing of one recovery, from the [unstuck] settings."""

    release: float
    reverse: float
    reverse_brake: float
    reset_game: Callable[[], None] | None
    """The game's reset hook; when given, it replaces backing up."""

    @classmethod
    def from_config(
        cls, config: UnstuckConfig, reset_game: Callable[[], None] | None
    ) -> RecoveryPlan:
        hook = reset_game if config.reset_game else None
        return cls(config.release, config.reverse, config.reverse_brake, hook)


class Recovery:
    """One recovery in progress: `command(now)` is what to send, None once it is over."""

    def __init__(self, plan: RecoveryPlan, started: float, last_steering: float) -> None:
        self._plan = plan
        self._started = started
        # Backing up with the wheels turned the other way swings the nose back where it came from.
        away = -1.0 if last_steering > 0 else 1.0
        self._reverse = ControllerState(steering=away, accelerate=0.0, brake=plan.reverse_brake)
        self._reset_sent = False

    def command(self, now: float) -> ControllerState | None:
        elapsed = now - self._started
        plan = self._plan
        if elapsed < plan.release:
            return NEUTRAL
        if plan.reset_game is not None:
            if not self._reset_sent:
                self._reset_sent = True
                plan.reset_game()
                return NEUTRAL
            return None
        if elapsed < plan.release + plan.reverse:
            return self._reverse
        return None


class Unstuck:
    """Detector and recovery together, as the drive loop uses them (one thread only)."""

    def __init__(self, detector: StuckDetector, plan: RecoveryPlan) -> None:
        self.detector = detector
        self.plan = plan
        self.recovery: Recovery | None = None
        self.count = 0

    def command(self, now: float) -> ControllerState | None:
        """The recovery's command while one runs; None when the model drives."""
        if self.recovery is None:
            return None
        command = self.recovery.command(now)
        if command is None:
            self.recovery = None
            self.detector.reset()
        return command

    def observe(self, image: np.ndarray, now: float, last_steering: float) -> bool:
        """Feed a new frame the model is about to drive on; True when a recovery starts."""
        if not self.detector.observe(image, now):
            return False
        self.count += 1
        self.detector.reset()
        self.recovery = Recovery(self.plan, now, last_steering)
        return True

    def interrupt(self) -> None:
        """The agent paused, the window went or the game paused: no recovery, a new window."""
        self.recovery = None
        self.detector.reset()
