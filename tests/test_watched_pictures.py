"""The pictures a drive shows are drawn once for everyone: a recording hands its pictures to the
live view's feed, and the watched-pictures thread draws only kinds that somebody watches and no
recording draws. On a fake clock, with real drawing."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

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


def parts(
    tmp_path: Path,
    mode: str = "hud",
    status: CountingStatus | None = None,
    model_bound_fps: int = 0,
):
    clock = FakeClock()
    frames: Slot[Frame] = Slot()
    frames.put(Frame(np.zeros((*SIZE[::-1], 4), np.uint8), clock.now(), 1, Region(0, 0, *SIZE)))
    ticks: Slot[Tick] = Slot()
    feeds = {kind: PictureFeed(kind) for kind in ("layout", "hud")}
    config = RecordConfig(
        folder=str(tmp_path), mode=mode, fps=FPS, hud=True, convcam=False, encoder="libx264"
    )
    status = status or CountingStatus()
    recorder = Recorder(
        config, frames, ticks, status, SIZE, "none", clock=clock, feeds=feeds
    )  # fmt: skip
    watched = WatchedPictures(
        config, feeds, frames, ticks, status, SIZE, "none", recorder.draws,
        epoch=recorder.epoch, clock=clock, model_bound_fps=model_bound_fps, capture_fps=FPS,
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


class RatesStatus(CountingStatus):
    """A status whose capture and prediction rates are fixed: PPS under 80% of capture.fps
    (FPS here) is a drive whose model, not the game, sets the pace. The measured capture rate
    does not count: a capture that follows a slow model grabs at about its PPS."""

    def __init__(self, fps: float, pps: float) -> None:
        super().__init__()
        self.fps, self.pps = fps, pps

    def __call__(self) -> Status:
        self.calls += 1
        return Status("test", fps=self.fps, pps=self.pps)


def pictures_in_two_seconds(
    tmp_path: Path, status: CountingStatus, model_bound_fps: int, every_slot: bool = False
) -> list[int]:
    """The slot indexes of the pictures drawn for a live viewer (or a stream) over 2 s."""
    clock, feeds, _, watched, _ = parts(tmp_path, status=status, model_bound_fps=model_bound_fps)
    indexes: list[int] = []
    watched.start()
    try:
        clock.settle(waiters=1)
        with feeds["hud"].watch(every_slot=every_slot):
            for _ in range(20):
                clock.advance(0.1)
                picture, _ = feeds["hud"].get()
                if picture is not None and (not indexes or picture.index != indexes[-1]):
                    indexes.append(picture.index)
    finally:
        watched.stop()
    return indexes


def test_while_the_model_sets_the_pace_the_live_view_gets_fewer_pictures(
    tmp_path: Path,
) -> None:
    """Capture at 10 a second; a model predicting 3 times a second: at most 5 pictures a
    second (although the capture, following the model, measures 3 frames a second)."""
    slow = pictures_in_two_seconds(tmp_path, RatesStatus(fps=3, pps=3), model_bound_fps=5)
    assert len(slow) in (10, 11), slow
    assert all(b - a == 2 for a, b in itertools.pairwise(slow[1:])), slow
    keeps_up = pictures_in_two_seconds(tmp_path, RatesStatus(fps=10, pps=8), model_bound_fps=5)
    assert len(keeps_up) >= 19, keeps_up  # 80% of the frames: the game sets the pace
    unlimited = pictures_in_two_seconds(tmp_path, RatesStatus(fps=10, pps=3), model_bound_fps=0)
    assert len(unlimited) >= 19, unlimited
    paused = pictures_in_two_seconds(tmp_path, RatesStatus(fps=10, pps=0), model_bound_fps=5)
    assert len(paused) >= 19, paused  # no predictions (paused): nothing to make room for
    stream = pictures_in_two_seconds(
        tmp_path, RatesStatus(fps=10, pps=3), model_bound_fps=5, every_slot=True
    )
    assert len(stream) >= 19, stream  # a video gets a picture every slot


class SessionStatus(CountingStatus):
    """The drive session's own HUD status, read from its (still empty) status slot."""

    def __init__(self) -> None:
        from agent.session import _hud_status_of

        super().__init__()
        self.shown: list[Status] = []
        self._status = _hud_status_of(Slot())

    def __call__(self) -> Status:
        self.calls += 1
        self.shown.append(self._status())
        return self.shown[-1]


def test_pictures_drawn_before_the_drive_loops_first_status_show_it_starting(
    tmp_path: Path,
) -> None:
    """The session starts this thread before its drive loop puts a first status: a stream
    that wanted pictures that instant must get them (a CI run's stream thread died there and
    the ingest got nothing for the whole drive)."""
    from agent.session import STARTING

    status = SessionStatus()
    clock, feeds, _, watched, _ = parts(tmp_path, status=status)
    watched.start()
    try:
        clock.settle(waiters=1)
        with feeds["hud"].watch():
            clock.advance(0.5)
            picture, _ = feeds["hud"].get()
    finally:
        watched.stop()
    assert watched.error is None
    assert picture is not None
    assert status.shown and {shown.model_name for shown in status.shown} == {STARTING}


class FailingStatus(CountingStatus):
    """A status that fails its first `failures` calls (a drawing bug met by a few odd
    moments), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def __call__(self) -> Status:
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError(f"odd status {self.calls}")
        return Status("test")


def test_a_picture_that_fails_to_draw_is_tried_again_later_not_never(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream runs for days: three failed pictures in a row pause the drawing 1, 2 and 4 s
    (not every slot: the log would fill), then pictures come again, and the log says so."""
    caplog.set_level(logging.INFO, logger="agent.record.watched")
    status = FailingStatus(failures=3)
    clock, feeds, _, watched, _ = parts(tmp_path, status=status)
    watched.start()
    try:
        clock.settle(waiters=1)
        with feeds["hud"].watch():
            clock.advance(0.1)  # the idle thread's next look: it draws, and fails
            clock.settle(waiters=1)
            assert status.calls == 1 and watched.failures == 1
            clock.advance(6.9)  # 1 + 2 s of pauses after the first two failures, then 4 s more
            clock.settle(waiters=1)
            assert status.calls == 3 and feeds["hud"].get() == (None, 0)
            clock.advance(0.2)
            clock.settle(waiters=1)
            picture, count = feeds["hud"].get()
    finally:
        watched.stop()
    assert picture is not None and count >= 1
    assert isinstance(watched.error, ValueError) and watched.failures == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split(": ")[0] for r in errors] == [
        f"drawing pictures for the live view failed ({n} in a row)" for n in (1, 2, 3)
    ]
    assert errors[0].exc_info and not errors[1].exc_info  # one traceback, not one a second
    assert "again after 3 failures" in caplog.text
