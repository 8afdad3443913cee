"""The drive loop with real parts: a real compiled model, the real slot, the null controller."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from functools import partial
from typing import Any

import numpy as np
import pytest

from agent.controllers.null import NullController
from agent.drive.control import ControlMapper
from agent.drive.hotswap import SwapHistory
from agent.drive.loop import (
    DRIVING,
    PAUSED,
    UNSTUCK,
    WAITING,
    DriveLoop,
    PartFailed,
    failure_to_raise,
)
from agent.drive.status import DriveStatus
from agent.drive.unstuck import RecoveryPlan, StuckDetector, Unstuck
from agent.errors import CharlesError
from agent.inference.predictor import Predictor
from agent.inference.preprocess import preprocess
from agent.nets.registry import get_line
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.liveness import Failures
from agent.runtime.slot import Slot
from agent.types import NEUTRAL, ControllerState, Frame, Region, Tick
from tests.helpers.clock import FakeClock
from tests.helpers.models import constant_driver

LINE = get_line("pilotnet_small")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(constant_driver(0.5, -0.25), LINE, "constant", warmup_runs=1)


def frame(seq: int, age: float = 0.0) -> Frame:
    """A captured frame; `age` seconds old when it is made."""
    image = np.full((720, 1280, 4), seq % 256, dtype=np.uint8)
    return Frame(image, time.monotonic() - age, seq, Region(0, 0, 1280, 720))


class Rig:
    """A loop wired to a null controller; `failures` and `window_ok` steer its inputs."""

    def __init__(
        self,
        predictor: Predictor,
        mapper: ControlMapper | None = None,
        clock: Clock = SYSTEM_CLOCK,
        **parts: Any,
    ) -> None:
        """`parts`: the loop's optional parts (hot_swap, unstuck, request_frame, ...)."""
        self.frames: Slot[Frame] = parts.pop("frames", None) or Slot()
        self.ticks: Slot[Tick] = Slot()
        self.controller = NullController()
        self.window_ok = True
        self.failures = Failures()
        self.loop = DriveLoop(
            frames=self.frames,
            window_ready=lambda: self.window_ok,
            to_model_input=partial(
                preprocess, capture_size=(1280, 720), crop=(0, 0, 0, 0), input_size=LINE.input_size
            ),
            predictor=predictor,
            mapper=mapper or ControlMapper(),
            controller=self.controller,
            hz=100,
            ticks=self.ticks,
            failures=self.failures,
            clock=clock,
            **parts,
        )

    def run_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.loop.run, daemon=True)
        thread.start()
        return thread

    def feed_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.feed_until(lambda: time.monotonic() >= end)

    def feed_until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        seq = 0
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            seq += 1
            self.frames.put(frame(seq))
            time.sleep(0.01)


def test_drives_with_the_mapped_prediction_and_never_repeats_a_frame(predictor) -> None:
    rig = Rig(predictor)
    rig.frames.put(frame(1))
    rig.loop.run(max_ticks=20)
    # One frame, twenty ticks: exactly one prediction, its command sent, then neutral at the end.
    assert rig.loop.counters.predictions == 1
    assert rig.loop.counters.ticks == 20
    assert rig.loop.skipped == 0
    tick, _ = rig.ticks.get()
    assert tick is not None and tick.prediction is not None
    assert tick.state == DRIVING and tick.frame is not None and tick.frame.seq == 1
    assert tick.prediction.throttle == pytest.approx(0.5, abs=1e-5)
    assert tick.command.accelerate == pytest.approx(0.5, abs=1e-5)
    assert tick.command.steering == pytest.approx(-0.25, abs=1e-5)
    assert tick.latency is not None and tick.latency > 0
    # What the recording's "model input" panel shows: the picture as the model saw it.
    assert tick.model_input is not None and tick.model_input.shape == LINE.input_shape
    assert rig.controller.last == NEUTRAL
    assert rig.loop.error is None


def test_a_failed_part_stops_the_loop_with_controls_neutral(predictor) -> None:
    rig = Rig(predictor)
    thread = rig.run_in_thread()
    rig.feed_until(lambda: rig.loop.counters.predictions >= 3)
    assert rig.controller.last.accelerate == pytest.approx(0.5, abs=1e-5)
    rig.failures.report("capture", RuntimeError("capture thread died"))
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(rig.loop.error, PartFailed)
    assert str(rig.loop.error) == "capture: RuntimeError: capture thread died"
    assert rig.controller.last == NEUTRAL


def test_the_loop_waits_for_a_new_frame_without_ending(predictor) -> None:
    rig = Rig(predictor)
    thread = rig.run_in_thread()
    try:
        for count in (1, 2):
            rig.frames.put(frame(count))
            deadline = time.monotonic() + 5
            while rig.loop.counters.predictions < count:
                assert time.monotonic() < deadline, f"frame {count} was not driven"
                time.sleep(0.01)
            time.sleep(0.3)  # thirty ticks with no new frame
            assert thread.is_alive() and not rig.loop.stopping
            assert rig.loop.counters.predictions == count
    finally:
        rig.loop.stop()
        thread.join(timeout=5)


def test_each_new_frame_is_predicted_on_once_as_it_arrives(predictor) -> None:
    """Frame-driven: the loop wakes on each new frame, so with a model faster than capture it
    predicts on every frame exactly once, and never twice on one, whatever its own rate."""
    rig = Rig(predictor)
    seen: list[int] = []
    to_input = rig.loop._to_model_input

    def noting(image: np.ndarray) -> np.ndarray:
        seen.append(int(image[0, 0, 0]))  # frame(seq) is filled with seq % 256
        return to_input(image)

    rig.loop._to_model_input = noting
    rig.loop._hz = 0.05  # its idle period (20 s) is far longer than the frames' spacing
    thread = rig.run_in_thread()
    try:
        for seq in range(1, 41):
            rig.frames.put(frame(seq))
            # Within half the idle period: only a loop woken by the frame itself makes it (a
            # loop on its own clock would take the frame at its next tick, up to 20 s on).
            deadline = time.monotonic() + 10.0
            while len(seen) < seq:  # the next frame comes once this one is taken
                assert time.monotonic() < deadline, f"frame {seq} waited for the loop's clock"
                time.sleep(0.001)
            time.sleep(0.01)
    finally:
        rig.loop.stop()
        thread.join(timeout=5)
    assert seen == list(range(1, 41))
    assert rig.loop.counters.predictions == 40 and rig.loop.skipped == 0


def test_frames_that_arrive_while_predicting_are_skipped_for_the_newest(predictor) -> None:
    rig = Rig(predictor)
    seen: list[int] = []
    to_input = rig.loop._to_model_input

    def slow(image: np.ndarray) -> np.ndarray:
        seen.append(int(image[0, 0, 0]))
        time.sleep(0.05)  # a slow model: five frames arrive meanwhile
        return to_input(image)

    rig.loop._to_model_input = slow
    thread = rig.run_in_thread()
    try:
        rig.feed_until(lambda: len(seen) >= 5)
    finally:
        rig.loop.stop()
        thread.join(timeout=5)
    assert seen == sorted(set(seen)), "a frame was predicted twice or out of order"
    assert rig.loop.skipped == seen[-1] - len(seen) - (seen[0] - 1)
    assert rig.loop.skipped >= len(seen) - 1  # several frames came during each prediction


class Camera:
    """A capture stand-in: a frame every `period` seconds, and one at once when asked (marked
    FRESH in its pixels), like Grabber.request_frame. Once asked it grabs only when asked
    again, until `stop_following` (the Grabber's `only_on_request`, with a long hold)."""

    FRESH = 255

    def __init__(self, frames: Slot[Frame], period: float, clock: Clock) -> None:
        self.frames, self.period, self.clock = frames, period, clock
        self.requests = 0
        self.following = False
        self._asked = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def request_frame(self) -> None:
        self.requests += 1
        self.following = True
        self._asked.set()
        self._wake.set()

    def stop_following(self) -> None:
        if self.following:
            self.following = False
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0 if self.following else self.period)
            self._wake.clear()
            if self.following and not self._asked.is_set():
                continue
            asked = self._asked.is_set()
            self._asked.clear()
            self._seq += 1
            image = np.full((720, 1280, 4), self.FRESH if asked else self._seq % 200, np.uint8)
            self.frames.put(Frame(image, self.clock.now(), self._seq, Region(0, 0, 1280, 720)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def rig_with_camera(predictor: Predictor) -> tuple[Rig, Camera, FakeClock]:
    """A loop whose frames come from a Camera at 30 fps (real time), wired as the session wires
    the Grabber. The loop and the camera read a fake clock: the model's time is what the test
    advances it by, so "slower than a capture period" does not depend on this machine's load."""
    clock = FakeClock()
    frames: Slot[Frame] = Slot()
    camera = Camera(frames, period=0.03, clock=clock)
    rig = Rig(
        predictor, clock=clock, frames=frames, request_frame=camera.request_frame,
        stop_following=camera.stop_following,
    )  # fmt: skip
    return rig, camera, clock


@pytest.mark.parametrize("model_seconds", [0.05, 0.0])
def test_a_model_slower_than_the_capture_starts_on_a_fresh_frame(predictor, model_seconds) -> None:
    """Slower than a capture period: after each prediction the loop asks for a fresh frame and
    predicts on it, not on one captured meanwhile (up to a period old). Faster: it never asks,
    and the capture's own rate paces it."""
    rig, camera, clock = rig_with_camera(predictor)
    fresh: list[bool] = []
    to_input = rig.loop._to_model_input

    stale = np.full((720, 1280, 4), 7, dtype=np.uint8)

    def model(image: np.ndarray) -> np.ndarray:
        fresh.append(int(image[0, 0, 0]) == Camera.FRESH)
        clock.advance(model_seconds)
        if model_seconds:  # two frames captured while this slow prediction ran
            for _ in range(2):
                rig.frames.put(Frame(stale, clock.now(), 0, Region(0, 0, 1280, 720)))
        return to_input(image)

    rig.loop._to_model_input = model
    thread = rig.run_in_thread()
    try:
        deadline = time.monotonic() + 10
        while len(fresh) < 8:
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)
    finally:
        rig.loop.stop()
        thread.join(timeout=5)
        camera.stop()
    latencies = list(rig.loop.counters.latencies)
    if model_seconds:
        assert all(fresh[1:]), fresh  # every prediction after the first started on a fresh one
        # The frames captured meanwhile are skipped, never predicted on: each frame up to the
        # newest one seen was either predicted on or skipped, once.
        assert rig.loop.skipped >= 2 * (rig.loop.counters.predictions - 1)
        assert rig.loop.skipped + rig.loop.counters.predictions == rig.loop._last_seq
        # Capture to command is the model's time, never plus a period's wait.
        assert latencies[1:] == pytest.approx([model_seconds] * (len(latencies) - 1))
    else:
        assert camera.requests == 0 and not any(fresh)


def test_a_model_slow_once_gets_frames_at_the_capture_rate_again(predictor) -> None:
    """One slow prediction (a load beside it) makes the loop ask for a fresh frame; the next,
    fast one hands the capture back to its own rate. Found in CI: without that, a fast model
    waited up to a second for its next frame, and the controller's dead-man let go."""
    rig, camera, clock = rig_with_camera(predictor)
    calls: list[float] = []
    enough = threading.Event()
    to_input = rig.loop._to_model_input

    def model(image: np.ndarray) -> np.ndarray:
        calls.append(time.monotonic())  # real time: how often frames really came
        if len(calls) >= 20:
            enough.set()
        if len(calls) == 3:
            clock.advance(0.05)  # this one prediction took longer than a capture period
        return to_input(image)

    rig.loop._to_model_input = model
    thread = rig.run_in_thread()
    try:
        assert enough.wait(10), f"only {len(calls)} predictions"
    finally:
        rig.loop.stop()
        thread.join(timeout=5)
        camera.stop()
    assert camera.requests == 1
    gaps = np.diff(calls)
    # Frames come at the capture's rate again (30 a second; 0.6 s leaves room for a loaded
    # machine): a loop still asking for a fresh frame each time waited about a second.
    assert len(calls) >= 20 and gaps.max() < 0.6, gaps.max()


def test_pause_and_lost_window_send_neutral_and_resume(predictor) -> None:
    rig = Rig(predictor)
    thread = rig.run_in_thread()
    try:
        rig.feed_until(lambda: rig.loop.counters.predictions >= 2)
        rig.loop.toggle_pause()
        rig.feed_until(lambda: (rig.ticks.get()[0] or tick_stub()).state == PAUSED)
        assert rig.controller.last == NEUTRAL
        paused_tick = rig.ticks.get()[0]
        assert paused_tick.command == NEUTRAL and paused_tick.prediction is None
        assert paused_tick.commanded_at <= time.monotonic()
        paused_at = rig.loop.counters.predictions
        rig.feed_for(0.3)
        assert rig.loop.counters.predictions == paused_at  # new frames, but no predictions

        rig.loop.toggle_pause()
        rig.feed_until(lambda: rig.loop.counters.predictions > paused_at)
        assert rig.controller.last.accelerate > 0

        rig.window_ok = False
        rig.feed_until(lambda: (rig.ticks.get()[0] or tick_stub()).state == WAITING)
        assert rig.controller.last == NEUTRAL
        rig.window_ok = True
        resumed_from = rig.loop.counters.predictions
        rig.feed_until(lambda: rig.loop.counters.predictions > resumed_from)
        assert rig.controller.last.accelerate > 0
    finally:
        rig.loop.stop()
        thread.join(timeout=5)
    assert rig.controller.last == NEUTRAL


def tick_stub() -> Tick:
    return Tick("starting", None, None, NEUTRAL, 0.0)


def test_latency_is_measured_from_each_frames_capture_time(predictor) -> None:
    latencies = []
    for seq, age in ((1, 0.3), (2, 0.6), (3, 0.0)):
        rig = Rig(predictor)
        rig.frames.put(frame(seq, age))
        rig.loop.run(max_ticks=3)
        tick, _ = rig.ticks.get()
        assert tick is not None and tick.frame is not None and tick.frame.seq == seq
        assert tick.latency == pytest.approx(tick.commanded_at - tick.frame.captured_at)
        assert list(rig.loop.counters.latencies) == [tick.latency]
        assert len(rig.loop.counters.predict_seconds) == 1
        latencies.append(tick.latency)
    # Each frame's age at capture shows up in its latency, plus the time to predict and send.
    assert latencies[0] >= 0.3 and latencies[1] >= 0.6
    assert latencies[1] - latencies[0] == pytest.approx(0.3, abs=0.1)
    assert 0.0 < latencies[2] < latencies[0]


def broken_predictor() -> Predictor:
    """A real network whose steering output is NaN whatever it sees."""
    model = constant_driver(0.5, -0.25)
    layer = model.get_layer("steering")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.full_like(bias, np.nan)])
    return Predictor(model, LINE, "broken", warmup_runs=1)


def test_a_non_finite_prediction_sends_neutral_counts_and_forgets_smoothing(
    predictor, caplog: pytest.LogCaptureFixture
) -> None:
    mapper = ControlMapper(smoothing=0.9)
    good = Rig(predictor, mapper)
    good.frames.put(frame(1))
    good.loop.run(max_ticks=2)
    assert mapper._previous is not None  # smoothing history from a good prediction

    broken = broken_predictor()
    with caplog.at_level(logging.WARNING, logger="agent.drive.loop"):
        first = Rig(broken, mapper)
        first.controller.set(ControllerState(accelerate=1.0))
        first.frames.put(frame(1))
        first.loop.run(max_ticks=2)
        # Told at once, with the model's name; then only counted.
        warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
        assert warnings == ["broken produced a non-finite output; sent neutral"]
        tick = first.ticks.get()[0]
        assert tick is not None and tick.prediction is not None
        assert (tick.prediction.finite, tick.command) == (False, NEUTRAL)
        assert mapper._previous is None, "smoothing would blend the next prediction with old ones"

        rig = Rig(broken, mapper)
        thread = rig.run_in_thread()
        try:
            rig.feed_until(lambda: rig.loop.counters.predictions >= 3)
        finally:
            rig.loop.stop()
            thread.join(5)
    assert rig.loop.counters.nonfinite == rig.loop.counters.predictions >= 3
    assert rig.controller.last == NEUTRAL
    assert sum("non-finite" in r.getMessage() for r in caplog.records) == 2  # once per loop
    assert all(seconds > 0 for seconds in rig.loop.counters.predict_seconds)


class Boom(Exception):
    pass


def test_a_bug_in_the_loop_keeps_its_traceback_and_is_not_a_user_error(
    predictor, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(predictor)

    def buggy(image: np.ndarray) -> np.ndarray:
        raise Boom("a bug in preprocessing")

    rig.loop._to_model_input = buggy
    rig.frames.put(frame(1))
    with caplog.at_level(logging.ERROR, logger="agent.drive.loop"):
        rig.loop.run(max_ticks=3)
    assert isinstance(rig.loop.error, Boom)
    assert rig.controller.last == NEUTRAL
    [record] = [r for r in caplog.records if r.name == "agent.drive.loop"]
    assert record.getMessage() == "drive loop stopped: a bug in preprocessing"
    assert record.exc_info, "a bug must be logged with its traceback"
    raised = failure_to_raise(rig.loop.error)
    assert not isinstance(raised, CharlesError) and raised.__cause__ is rig.loop.error
    assert str(raised) == "the drive loop crashed: Boom: a bug in preprocessing"

    # A part's user problem stays a one-line user error.
    lost = CharlesError("lost the X display ':9'")
    rig = Rig(predictor)
    rig.failures.report("capture", lost)
    with caplog.at_level(logging.ERROR, logger="agent.drive.loop"):
        caplog.clear()
        rig.loop.run(max_ticks=3)
    assert failure_to_raise(rig.loop.error) is lost
    [record] = [r for r in caplog.records if r.name == "agent.drive.loop"]
    assert not record.exc_info
    # A user error raised from another error is still that user error, not its cause.
    try:
        raise lost from OSError("connection reset")
    except CharlesError as error:
        assert failure_to_raise(error) is lost


def test_every_tick_publishes_one_frozen_status_snapshot(predictor) -> None:
    """What other threads see of the loop: a snapshot per tick, never the loop's own counters."""
    rig = Rig(predictor)
    first, seq = rig.loop.status.get()
    assert seq == 1 and first is not None and first.state == "starting"
    assert (first.model, first.predictions, first.frames, first.swaps) == ("constant", 0, 0, ())
    thread = rig.run_in_thread()
    try:
        rig.feed_until(lambda: rig.loop.counters.predictions >= 3)
        held, _ = rig.loop.status.get()
        assert held is not None
        rig.feed_until(lambda: rig.loop.counters.predictions >= held.predictions + 2)
    finally:
        rig.loop.stop()
        thread.join(timeout=5)
    status, seq = rig.loop.status.get()
    assert seq == 1 + rig.loop.counters.ticks  # one per tick, after the one from the start
    assert status is not None and status.state == DRIVING
    assert status.ticks == rig.loop.counters.ticks
    assert status.predictions == rig.loop.counters.predictions
    assert status.skipped == rig.loop.skipped and status.frames >= status.predictions
    assert status.backend == predictor.backend and status.version is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.predictions = 99  # type: ignore[misc]
    # The snapshot a reader held did not change while the loop went on.
    assert held.predictions < status.predictions and held.ticks < status.ticks


@pytest.mark.parametrize("paused", [True, False])
def test_the_status_says_paused_or_waiting_for_the_window(predictor, paused: bool) -> None:
    rig = Rig(predictor)
    if paused:
        rig.loop.paused.set()
    else:
        rig.window_ok = False
    rig.loop.run(max_ticks=2)
    status, _ = rig.loop.status.get()
    assert status is not None and status.state == (PAUSED if paused else WAITING)


class SwapSpy:
    """The hot swap's side the loop uses, recording when unstuck began; never swaps."""

    def __init__(self) -> None:
        self.unstuck_at: list[float] = []
        self.predicted_at: list[float] = []

    def predict(self, driving: Predictor, model_input: np.ndarray, now: float):
        self.predicted_at.append(now)  # the swap policy decides on the loop's clock
        return driving, driving.predict(model_input)

    def unstuck_started(self, now: float) -> None:
        self.unstuck_at.append(now)

    def history(self) -> SwapHistory:
        return SwapHistory("spy")


class CountingMapper(ControlMapper):
    def __init__(self) -> None:
        super().__init__()
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1
        super().reset()


class StepRig(Rig):
    """A loop on a fake clock with unstuck on; `step` advances time and feeds one frame, then
    waits (really, bounded) until the loop has handled it."""

    def __init__(self, predictor: Predictor, game_paused: bool = False) -> None:
        self.clock = FakeClock()
        self.mapper = CountingMapper()
        plan = RecoveryPlan(release=0.5, reverse=1.0, reverse_brake=0.6, reset_game=None)
        self.unstuck = Unstuck(StuckDetector(window=1.0, min_change=1.0), plan)
        self.swap = SwapSpy()
        super().__init__(
            predictor, self.mapper, clock=self.clock, unstuck=self.unstuck, hot_swap=self.swap,
            game_paused=lambda: game_paused,
        )  # fmt: skip
        self.sent: list[ControllerState] = []
        write = self.controller._write

        def noting(state: ControllerState, tag: int) -> None:
            self.sent.append(state)
            write(state, tag)

        self.controller._write = noting  # type: ignore[method-assign]
        self.seq = 0

    def step(self, seconds: float) -> DriveStatus:
        self.clock.advance(seconds)
        self.seq += 1
        image = np.full((720, 1280, 4), 90, dtype=np.uint8)  # a picture that never changes
        self.frames.put(Frame(image, self.clock.now(), self.seq, Region(0, 0, 1280, 720)))
        deadline = time.monotonic() + 10
        while True:
            status, _ = self.loop.status.wait_newer(0, timeout=0.05)
            if status is not None and status.frames >= self.seq and status.at >= self.clock.now():
                return status
            assert time.monotonic() < deadline, f"frame {self.seq} was not handled"


def test_a_still_picture_starts_a_recovery_that_releases_backs_up_and_hands_back(
    predictor, caplog: pytest.LogCaptureFixture
) -> None:
    """Unstuck in the loop, on a fake clock: a whole window of one picture starts a recovery
    (the swap is told), released for `release` s, then backing up with the wheels turned away
    from the last steering for `reverse` s, then the model drives again from fresh smoothing."""
    rig = StepRig(predictor)
    thread = rig.run_in_thread()
    try:
        with caplog.at_level(logging.INFO, logger="agent.drive.loop"):
            # Steps of 1/4 s (exact in binary). The first picture is at 0.25 s; the window of
            # 1 s is covered from 1.25 s on.
            for _ in range(4):
                assert rig.step(0.25).state == DRIVING
                assert rig.swap.predicted_at[-1] == rig.clock.now()
            driving_sent = rig.loop.counters.predictions
            started = rig.step(0.25)  # a whole second of the same picture: stuck
        assert started.state == UNSTUCK and started.unstucks == 1
        assert rig.swap.unstuck_at == [rig.clock.now()]
        assert rig.loop.counters.predictions == driving_sent  # the stuck frame is not driven on
        assert rig.sent[-1] == NEUTRAL  # release first
        tick, _ = rig.ticks.get()  # what the console and the recording show meanwhile
        assert tick is not None and (tick.state, tick.frame, tick.prediction) == (
            UNSTUCK,
            None,
            None,
        )
        assert (tick.command, tick.commanded_at) == (NEUTRAL, rig.clock.now())
        assert [r.getMessage() for r in caplog.records if "stuck" in r.getMessage()] == [
            "car stuck (the picture stood still): recovering (unstuck 1)"
        ]
        assert rig.step(0.25).state == UNSTUCK and rig.sent[-1] == NEUTRAL  # 0.25 s in
        backing = rig.step(0.5)  # 0.75 s in: backing up, wheels away from steering -0.25
        assert backing.state == UNSTUCK
        assert rig.sent[-1] == ControllerState(steering=1.0, accelerate=0.0, brake=0.6)
        assert rig.loop.counters.predictions == driving_sent
        resets = rig.mapper.resets
        assert rig.step(0.5).state == UNSTUCK  # 1.25 s in: still backing up
        after = rig.step(0.5)  # 1.75 s in: over; the model drives this frame
        assert after.state == DRIVING and after.predictions == driving_sent + 1
        assert rig.mapper.resets == resets + 1  # no smoothing carried over the recovery
        assert rig.sent[-1].accelerate == pytest.approx(0.5, abs=1e-5)
    finally:
        rig.loop.stop()
        thread.join(timeout=5)


def test_a_paused_game_never_starts_a_recovery(predictor) -> None:
    rig = StepRig(predictor, game_paused=True)
    thread = rig.run_in_thread()
    try:
        for _ in range(12):
            status = rig.step(0.25)
            assert status.state == DRIVING and status.unstucks == 0
        assert rig.swap.unstuck_at == []
    finally:
        rig.loop.stop()
        thread.join(timeout=5)


class LatencySpy:
    def __init__(self) -> None:
        self.notes: list[tuple[int, float, tuple[int, ...]]] = []

    def note(self, tag: int, captured_at: float, image: np.ndarray) -> None:
        self.notes.append((tag, captured_at, image.shape))


def test_each_command_is_tagged_noted_and_timed_on_the_loops_clock(predictor) -> None:
    """What the summary and render-to-command latency are built from: per prediction, the
    command tagged with its frame, the frame noted, and the clock's times recorded."""
    clock = FakeClock()
    spy = LatencySpy()
    rig = Rig(predictor, clock=clock, render_latency=spy)
    tags: list[int] = []
    set_state = rig.controller.set

    def tagged(state: ControllerState, tag: int = 0) -> None:
        tags.append(tag)
        set_state(state, tag)

    rig.controller.set = tagged  # type: ignore[method-assign]
    image = np.full((720, 1280, 4), 7, dtype=np.uint8)
    rig.frames.put(Frame(image, clock.now() - 0.25, 5, Region(0, 0, 1280, 720)))
    rig.loop.run(max_ticks=3)
    assert tags[0] == 5
    assert spy.notes == [(5, clock.now() - 0.25, (720, 1280, 4))]
    counters = rig.loop.counters
    assert list(counters.latencies) == [pytest.approx(0.25)]
    assert list(counters.sent_at) == [clock.now()]
    assert len(counters.preprocess_seconds) == len(counters.predict_seconds) == 1
    assert 0 < counters.preprocess_seconds[0] < 5 and 0 < counters.predict_seconds[0] < 5
