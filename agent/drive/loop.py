"""The drive loop: newest frame -> preprocess -> predict -> controller values -> send.

It runs on its own thread and is driven by frames: it sleeps on the capture slot and wakes the
moment a new frame is put there, so a frame waits for nothing but the model (an earlier design
ticked on its own 30 Hz clock, and each frame waited a random part of a tick: a capture-to-
command p50 of ~34 ms for a 2.5 ms model). Frames that arrive while a prediction runs are
skipped (counted), never queued: the next prediction takes the newest. A model slower than the
capture rate asks the capture for a fresh frame the moment its prediction ends
(`request_frame`), so it never starts on a picture up to a period old. With no new frame the
loop still wakes every period, so pause, window loss, recoveries and failed parts are handled
on time. It meets everything slow only through slots: it offers each tick (frame, prediction,
command) to the console and the recorder through one, and a `DriveStatus` snapshot (state,
model, counters, swaps; agent/drive/status.py) through another, the only view other threads
have of it. Nothing in a tick touches disk, loads files or sleeps except the wait for a frame.
Every way out of `run()` leaves the controller neutral.

Two things may change what a tick sends. A hot swap (agent/drive/hotswap.py) replaces the predictor
between two predictions with one that was loaded and checked in the background. Unstuck
(agent/drive/unstuck.py) watches the frames and, when the car stands still, sends a short recovery
script instead of predictions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.controllers.base import Controller
from agent.drive.control import ControlMapper
from agent.drive.hotswap import HotSwap
from agent.drive.latency import RenderToCommand
from agent.drive.status import STARTING, DriveStatus
from agent.drive.unstuck import Unstuck
from agent.errors import CharlesError, log_failure
from agent.inference.predictor import Predictor
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.liveness import Failures
from agent.runtime.ring import FloatRing
from agent.runtime.slot import Slot
from agent.types import NEUTRAL, ControllerState, Frame, Tick

log = logging.getLogger(__name__)

DRIVING = "driving"
PAUSED = "paused"
WAITING = "waiting for window"
UNSTUCK = "unstuck"


class PartFailed(RuntimeError):
    """A thread the loop depends on (capture, controller, hotkeys) died with an error."""


@dataclass
class LoopCounters:
    """What the loop did: its own thread writes these; others read `DriveLoop.status`, and the
    end-of-run summary reads these once the loop's thread has ended."""

    ticks: int = 0
    predictions: int = 0
    nonfinite: int = 0
    latencies: FloatRing = field(default_factory=FloatRing)
    """Capture -> command seconds of the predictions sent (the last ~2 hours at 30 PPS)."""
    predict_seconds: FloatRing = field(default_factory=FloatRing)
    """The predictor's own seconds per prediction, for the same predictions."""
    preprocess_seconds: FloatRing = field(default_factory=FloatRing)
    """Seconds turning each captured frame into the model's input (crop, resize, colours)."""
    sent_at: FloatRing = field(default_factory=FloatRing)
    """self._clock.now() of each command sent from a prediction (gaps between them = stalls)."""


class DriveLoop:
    """Drives one controller from one predictor until `stop()` (or `max_ticks`)."""

    def __init__(
        self,
        frames: Slot[Frame],
        window_ready: Callable[[], bool],
        to_model_input: Callable[[np.ndarray], np.ndarray],
        predictor: Predictor,
        mapper: ControlMapper,
        controller: Controller,
        hz: float,
        ticks: Slot[Tick],
        failures: Failures | None = None,
        hot_swap: HotSwap | None = None,
        unstuck: Unstuck | None = None,
        game_paused: Callable[[], bool] = lambda: False,
        request_frame: Callable[[], None] | None = None,
        stop_following: Callable[[], None] | None = None,
        render_latency: RenderToCommand | None = None,
        status: Slot[DriveStatus] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._frames = frames
        self._window_ready = window_ready
        self._to_model_input = to_model_input
        self.predictor = predictor
        """The predictor driving now; a hot swap replaces it between two predictions."""
        self._hot_swap = hot_swap
        self._unstuck = unstuck
        self._game_paused = game_paused
        self._request_frame = request_frame
        self._stop_following = stop_following
        self._render_latency = render_latency
        self._last_steering = 0.0
        self._mapper = mapper
        self._controller = controller
        self._hz = hz
        self._ticks = ticks
        self._failures = failures if failures is not None else Failures()
        self.paused = threading.Event()
        self._stopping = threading.Event()
        self.counters = LoopCounters()
        self.skipped = 0
        """Frames captured while a prediction ran and never predicted on (a newer one was)."""
        self.error: BaseException | None = None
        self.status: Slot[DriveStatus] = status if status is not None else Slot()
        """The newest snapshot, put at the end of every tick: what other threads read."""
        self._clock = clock
        self._state = STARTING
        self._last_seq = 0
        self._frames_put = 0
        self._neutral_sent = False
        self._publish_status()  # "starting": watchers have a snapshot before the first tick

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def toggle_pause(self) -> None:
        if self.paused.is_set():
            self.paused.clear()
        else:
            self.paused.set()

    def run(self, max_ticks: int | None = None) -> None:
        """The thread body. Exceptions are kept in `error` after the controller went neutral."""
        period = 1.0 / self._hz
        try:
            while not self._stopping.is_set():
                if max_ticks is not None and self.counters.ticks >= max_ticks:
                    break
                # Wakes at once on a new frame; otherwise after a period, for pause and the rest.
                frame, seq = self._frames.wait_newer(self._last_seq, timeout=period)
                self.counters.ticks += 1
                self._frames_put = seq
                self._raise_if_a_part_failed()
                self._tick(frame, seq, period)
                self._publish_status()
        except BaseException as error:
            self.error = error
            log_failure(log, "drive loop stopped", error, cause=_root_cause(error))
        finally:
            self._controller.neutral()
            self._stopping.set()

    def _tick(self, frame: Frame | None, seq: int, period: float) -> None:
        """One tick: neutral while paused or waiting, a recovery's command, or a prediction
        on the newest frame."""
        if self.paused.is_set() or not self._window_ready():
            self._state = PAUSED if self.paused.is_set() else WAITING
            if not self._neutral_sent:
                self._controller.neutral()
                self._mapper.reset()
                self._neutral_sent = True
            if self._unstuck is not None:
                self._unstuck.interrupt()
            self._ticks.put(Tick(self._state, None, None, NEUTRAL, self._clock.now()))
            self._last_seq = seq  # frames seen while paused are not predicted on later
            return
        if self._recovering():
            self._neutral_sent = False
            self._last_seq = seq
            return
        if frame is None or seq == self._last_seq:
            return  # no new frame yet: never predict twice on the same picture
        if self._last_seq:
            self.skipped += seq - self._last_seq - 1
        self._last_seq = seq
        self._neutral_sent = False
        if self._stuck(frame):
            return
        latency = self._drive_one(frame)
        self._state = DRIVING
        if self._request_frame is not None and latency >= period:
            self._last_seq = self._ask_for_a_fresh_frame(self._last_seq)
        elif self._stop_following is not None:
            # Fast again (one slow prediction, e.g. beside a load): frames at the
            # capture's rate, not only when asked.
            self._stop_following()

    def _publish_status(self) -> None:
        """Offer this tick's snapshot to the console, the recorder and the summary."""
        checkpoint = self.predictor.checkpoint
        history = self._hot_swap.history() if self._hot_swap is not None else None
        self.status.put(
            DriveStatus(
                state=self._state,
                model=self.predictor.name,
                backend=self.predictor.backend,
                version=checkpoint.manifest.version if checkpoint is not None else None,
                batches=checkpoint.manifest.batches if checkpoint is not None else None,
                at=self._clock.now(),
                frames=self._frames_put,
                ticks=self.counters.ticks,
                predictions=self.counters.predictions,
                skipped=self.skipped,
                nonfinite=self.counters.nonfinite,
                unstucks=self._unstuck.count if self._unstuck is not None else 0,
                swaps=history.swaps if history is not None else (),
                rejections=history.rejections if history is not None else (),
                loads=history.loads if history is not None else (),
            )
        )

    def _ask_for_a_fresh_frame(self, last_seq: int) -> int:
        """After a prediction longer than a capture period: every frame captured meanwhile is
        already up to a period old, so skip them and have the capture grab one now. The model
        then starts on a picture a grab old (~1-2 ms), not up to a period old. Returns the
        sequence number to wait beyond."""
        _, newest = self._frames.get()
        if newest > last_seq:
            self.skipped += newest - last_seq
            last_seq = newest
        assert self._request_frame is not None
        self._request_frame()
        return last_seq

    def _drive_one(self, frame: Frame) -> float:
        """Predict on `frame` and send the command; returns capture-to-command seconds."""
        started = time.perf_counter()
        model_input = self._to_model_input(frame.image)
        self.counters.preprocess_seconds.append(time.perf_counter() - started)
        if self._hot_swap is not None:
            # Between two predictions: a checked checkpoint may take over on this frame.
            self.predictor, prediction = self._hot_swap.predict(
                self.predictor, model_input, self._clock.now()
            )
        else:
            prediction = self.predictor.predict(model_input)
        # A broken (non-finite) prediction maps to neutral; here it is only counted and told.
        command = self._mapper.map(prediction.throttle, prediction.steering)
        if not prediction.finite:
            self.counters.nonfinite += 1
            if self.counters.nonfinite == 1:
                log.warning("%s produced a non-finite output; sent neutral", self.predictor.name)
        # Tagged with the frame, so the bundled game can say when its physics applied it.
        self._controller.set(command, tag=frame.seq)
        now = self._clock.now()
        if self._render_latency is not None:
            self._render_latency.note(frame.seq, frame.captured_at, frame.image)
        self._last_steering = command.steering
        self.counters.predictions += 1
        self.counters.latencies.append(now - frame.captured_at)
        self.counters.predict_seconds.append(prediction.seconds)
        self.counters.sent_at.append(now)
        self._ticks.put(Tick(DRIVING, frame, prediction, command, now, model_input))
        return now - frame.captured_at

    def _stuck(self, frame: Frame) -> bool:
        """Feed unstuck the new frame; True when it starts a recovery (sent instead)."""
        if self._unstuck is None:
            return False
        now = self._clock.now()
        if self._game_paused():
            self._unstuck.interrupt()
            return False
        if not self._unstuck.observe(frame.image, now, self._last_steering):
            return False
        count = self._unstuck.count
        log.info("car stuck (the picture stood still): recovering (unstuck %d)", count)
        if self._hot_swap is not None:
            self._hot_swap.unstuck_started(now)
        return self._recovering()

    def _recovering(self) -> bool:
        """Send the recovery's command while one runs; True then."""
        if self._unstuck is None:
            return False
        now = self._clock.now()
        was_recovering = self._unstuck.recovery is not None
        command = self._unstuck.command(now)
        if command is None:
            if was_recovering:
                self._mapper.reset()  # the model drives on from a standstill, not old smoothing
            return False
        self._send_script(command, now)
        return True

    def _send_script(self, command: ControllerState, now: float) -> None:
        self._state = UNSTUCK
        self._controller.set(command)
        self._ticks.put(Tick(UNSTUCK, None, None, command, now))

    def _raise_if_a_part_failed(self) -> None:
        failure = self._failures.first()
        if failure is not None:
            error = failure.error
            raise PartFailed(f"{failure.part}: {type(error).__name__}: {error}") from error


def _root_cause(error: BaseException) -> BaseException:
    """The part's own error behind a PartFailed; the error itself otherwise."""
    if isinstance(error, PartFailed) and error.__cause__ is not None:
        return error.__cause__
    return error


def failure_to_raise(error: BaseException) -> BaseException:
    """What `charles drive` raises when the loop stopped on `error`.

    A user problem (a CharlesError such as a lost display) is raised as it is, for its one-line
    message. Anything else is a bug: raised with its traceback, never dressed up as a user
    error.
    """
    cause = _root_cause(error)
    if isinstance(cause, CharlesError):
        return cause
    crash = RuntimeError(f"the drive loop crashed: {type(cause).__name__}: {cause}")
    crash.__cause__ = cause
    return crash
