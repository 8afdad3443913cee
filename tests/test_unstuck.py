"""Unstuck's detector and recovery script, on synthetic pictures with a known amount of motion.

The end-to-end case (the bundled game's car wedged off the track, detected and recovered by
`charles drive`) is test_drive_unstuck.py.
"""

from __future__ import annotations

import numpy as np

from agent.config import UnstuckConfig
from agent.drive.unstuck import RecoveryPlan, StuckDetector, Unstuck, thumbnail
from agent.types import NEUTRAL, ControllerState

RNG = np.random.default_rng(7)
SCENE = RNG.integers(0, 256, (720, 1280, 3), dtype=np.uint8)


def scene_at(offset: int) -> np.ndarray:
    """The scene scrolled by `offset` pixels: what a moving car's camera shows."""
    return np.roll(SCENE, offset * 7, axis=0)


def feed(detector: StuckDetector, frames: list[np.ndarray], fps: float = 30.0) -> list[bool]:
    return [detector.observe(frame, i / fps) for i, frame in enumerate(frames)]


def test_a_still_picture_counts_as_stuck_only_after_a_whole_window() -> None:
    detector = StuckDetector(window=2.0, min_change=3.0)
    verdicts = feed(detector, [SCENE] * 90)  # 3 s at 30 fps
    first = verdicts.index(True)
    assert first / 30.0 >= 2.0 and first / 30.0 < 2.1
    assert all(verdicts[first:])


def test_a_moving_picture_never_counts_and_neither_does_a_slow_crawl() -> None:
    detector = StuckDetector(window=2.0, min_change=3.0)
    assert not any(feed(detector, [scene_at(i) for i in range(120)]))
    # A crawl: the picture moves one step every 10 frames, so successive frames are mostly
    # equal, but over the window the picture has changed a lot.
    detector.reset()
    assert not any(feed(detector, [scene_at(i // 10) for i in range(120)]))


def test_small_flicker_is_still_stuck() -> None:
    """A HUD blinking or noise in a few pixels must not hide a car standing still."""
    detector = StuckDetector(window=1.0, min_change=3.0)
    frames = []
    for i in range(60):
        frame = SCENE.copy()
        frame[:40, :40] = 255 if i % 2 else 0  # a blinking corner
        frames.append(frame)
    assert feed(detector, frames)[-1]


def test_reset_starts_a_new_window() -> None:
    detector = StuckDetector(window=1.0, min_change=3.0)
    assert feed(detector, [SCENE] * 40)[-1]
    detector.reset()
    assert not detector.observe(SCENE, 10.0)
    assert not detector.observe(SCENE, 10.5)
    assert detector.observe(SCENE, 11.0)


def test_thumbnail_is_small_grey_and_follows_the_picture() -> None:
    small = thumbnail(SCENE)
    assert small.shape == (18, 32) and small.dtype == np.float32
    assert np.abs(thumbnail(255 - SCENE) - (255 - small)).max() < 1e-3


def plan(reset: bool, calls: list[str]) -> RecoveryPlan:
    config = UnstuckConfig(release=0.5, reverse=1.0, reverse_brake=0.8, reset_game=reset)
    return RecoveryPlan.from_config(config, lambda: calls.append("reset"))


def test_recovery_releases_then_backs_up_steering_the_other_way_then_hands_back() -> None:
    calls: list[str] = []
    unstuck = Unstuck(StuckDetector(window=1.0, min_change=3.0), plan(False, calls))
    for i in range(30):
        started = unstuck.observe(SCENE, i / 30.0, last_steering=0.6)
    assert not started and unstuck.count == 0
    assert unstuck.observe(SCENE, 1.0, last_steering=0.6) and unstuck.count == 1
    assert unstuck.command(1.2) == NEUTRAL  # released first
    assert unstuck.command(1.6) == ControllerState(steering=-1.0, accelerate=0.0, brake=0.8)
    assert unstuck.command(2.4) == ControllerState(steering=-1.0, accelerate=0.0, brake=0.8)
    assert unstuck.command(2.6) is None  # over: the model drives again
    assert unstuck.recovery is None and calls == []
    # And a new whole window is needed before the next one.
    assert not unstuck.observe(SCENE, 2.7, last_steering=0.0)


def test_recovery_uses_the_games_reset_hook_instead_of_backing_up_when_it_has_one() -> None:
    calls: list[str] = []
    unstuck = Unstuck(StuckDetector(window=0.5, min_change=3.0), plan(True, calls))
    unstuck.observe(SCENE, 0.0, last_steering=-0.2)
    assert unstuck.observe(SCENE, 0.5, last_steering=-0.2)
    assert unstuck.command(0.6) == NEUTRAL and calls == []
    assert unstuck.command(1.1) == NEUTRAL and calls == ["reset"]
    assert unstuck.command(1.2) is None and calls == ["reset"]


def test_interrupt_cancels_a_recovery_and_the_window() -> None:
    unstuck = Unstuck(StuckDetector(window=0.5, min_change=3.0), plan(False, []))
    unstuck.observe(SCENE, 0.0, last_steering=0.0)
    assert unstuck.observe(SCENE, 0.5, last_steering=0.0)
    unstuck.interrupt()
    assert unstuck.command(0.6) is None
    assert not unstuck.observe(SCENE, 0.7, last_steering=0.0)
