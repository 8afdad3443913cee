"""The pictures a drive shows are drawn once for everyone: a recording hands its pictures to the
live view's feed, and the watched-pictures thread draws only kinds that somebody watches and no
recording draws. On a fake clock, with real drawing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.config import RecordConfig
from agent.record.hud import Status
from agent.record.pictures import PictureFeed
from agent.record.recorder import Recorder
from agent.record.watched import WatchedPictures, picture_index
from agent.runtime.slot import Slot
from agent.types import Frame, Region, Tick
from tests.helpers.clock import FakeClock

FPS = 10
SIZE = (160, 120)


class CountingStatus:
    """The HUD's status, counting how often a picture is drawn (once per picture drawn)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Status:
        self.calls += 1
        return Status("test")


def parts(tmp_path: Path, mode: str = "hud"):
    clock = FakeClock()
    frames: Slot[Frame] = Slot()
    frames.put(Frame(np.zeros((*SIZE[::-1], 4), np.uint8), clock.now(), 1, Region(0, 0, *SIZE)))
    ticks: Slot[Tick] = Slot()
    feeds = {kind: PictureFeed(kind) for kind in ("layout", "hud")}
    config = RecordConfig(
        folder=str(tmp_path), mode=mode, fps=FPS, hud=True, convcam=False, encoder="libx264"
    )
    status = CountingStatus()
    recorder = Recorder(
        config, frames, ticks, status, SIZE, "none", clock=clock, feeds=feeds
    )  # fmt: skip
    watched = WatchedPictures(
        config, feeds, frames, ticks, status, SIZE, "none", recorder.draws,
        epoch=recorder.epoch, clock=clock,
    )  # fmt: skip
    return clock, feeds, recorder, watched, status


def test_nothing_is_drawn_while_nobody_watches(tmp_path: Path) -> None:
    clock, feeds, _, watched, status = parts(tmp_path)
    watched.start()
    try:
        clock.settle(waiters=1)
        clock.advance(2.0)
        assert status.calls == 0 and feeds["hud"].get() == (None, 0)
        with feeds["hud"].watch():
            clock.advance(1.0)
            picture, count = feeds["hud"].get()
            assert picture is not None and count >= FPS - 1  # about one per slot
            assert picture.image.shape == (SIZE[1], SIZE[0], 3)
            assert picture.index == picture_index(picture.drawn_at, watched.epoch, FPS)
            assert feeds["layout"].get() == (None, 0)  # only the kind watched
        drawn = status.calls
        clock.advance(2.0)
        assert status.calls == drawn  # nobody watches again: nothing drawn
    finally:
        watched.stop()


def test_a_kind_being_recorded_is_drawn_once_for_the_recording_and_the_viewers(
    tmp_path: Path,
) -> None:
    clock, feeds, recorder, watched, status = parts(tmp_path, mode="hud")
    watched.start()
    try:
        with feeds["hud"].watch():
            assert recorder.start()
            clock.settle(waiters=2)
            clock.advance(1.0)
            assert recorder.draws("hud") and not recorder.draws("layout")
            assert watched.wanted() == []  # the recording draws what the viewer watches
            picture, count = feeds["hud"].get()
            assert picture is not None and count > 0
            # One status per picture: every picture shown was drawn once, by the recording.
            assert status.calls == recorder._current.shown.shown  # type: ignore[union-attr]
            [report] = recorder.close()
            assert report.frames == status.calls
            clock.advance(1.0)  # recording stopped: the watched thread draws for the viewer
            assert watched.wanted() == ["hud"] and feeds["hud"].get()[1] > count
    finally:
        watched.stop()
