"""The drive loop: newest frame -> preprocess -> predict -> controller values -> send.

It runs on its own thread, paced by a monotonic rate keeper, and meets everything slow only
through slots: it takes the newest captured frame (never a queue of stale ones) and offers each
tick to the console through another slot. Nothing in a tick touches disk, loads files or sleeps
except the rate keeper. Every way out of `run()` leaves the controller neutral.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.control import ControlMapper
from agent.controllers.base import Controller
from agent.errors import CharlesError, log_failure
from agent.predictor import Predictor
from agent.ratekeeper import RateKeeper
from agent.slot import Slot
from agent.types import NEUTRAL, Frame, Tick

log = logging.getLogger(__name__)

DRIVING = "driving"
PAUSED = "paused"
WAITING = "waiting for window"


class PartFailed(RuntimeError):
    """A thread the loop depends on (capture, controller, hotkeys) died with an error."""


@dataclass
class LoopCounters:
    """What the loop did; read by the console and the end-of-run summary."""

    ticks: int = 0
    predictions: int = 0
    nonfinite: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    """Capture -> command seconds of the predictions sent (the last ~2 hours at 30 PPS)."""
    predict_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    """The predictor's own seconds per prediction, for the same predictions."""


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
        health_checks: Sequence[Callable[[], BaseException | None]] = (),
    ) -> None:
        self._frames = frames
        self._window_ready = window_ready
        self._to_model_input = to_model_input
        self._predictor = predictor
        self._mapper = mapper
        self._controller = controller
        self._hz = hz
        self._ticks = ticks
        self._health_checks = tuple(health_checks)
        self.paused = threading.Event()
        self._stopping = threading.Event()
        self.counters = LoopCounters()
        self.lagged = 0
        self.error: BaseException | None = None

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
        keeper = RateKeeper(self._hz)
        last_seq = 0
        neutral_sent = False
        try:
            while not self._stopping.is_set():
                if max_ticks is not None and self.counters.ticks >= max_ticks:
                    break
                keeper.keep_time()
                self.counters.ticks += 1
                self._raise_if_a_part_failed()
                if self.paused.is_set() or not self._window_ready():
                    state = PAUSED if self.paused.is_set() else WAITING
                    if not neutral_sent:
                        self._controller.neutral()
                        self._mapper.reset()
                        neutral_sent = True
                    self._ticks.put(Tick(state, None, None, NEUTRAL, time.monotonic()))
                    continue
                frame, seq = self._frames.get()
                if frame is None or seq == last_seq:
                    continue  # no new frame yet: never predict twice on the same picture
                last_seq = seq
                neutral_sent = False
                self._drive_one(frame)
        except BaseException as error:
            self.error = error
            log_failure(log, "drive loop stopped", error, cause=_root_cause(error))
        finally:
            self.lagged = keeper.lagged
            self._controller.neutral()
            self._stopping.set()

    def _drive_one(self, frame: Frame) -> None:
        prediction = self._predictor.predict(self._to_model_input(frame.image))
        # A broken (non-finite) prediction maps to neutral; here it is only counted and told.
        command = self._mapper.map(prediction.throttle, prediction.steering)
        if not prediction.finite:
            self.counters.nonfinite += 1
            if self.counters.nonfinite == 1:
                log.warning("%s produced a non-finite output; sent neutral", self._predictor.name)
        self._controller.set(command)
        now = time.monotonic()
        self.counters.predictions += 1
        self.counters.latencies.append(now - frame.captured_at)
        self.counters.predict_seconds.append(prediction.seconds)
        self._ticks.put(Tick(DRIVING, frame, prediction, command, now))

    def _raise_if_a_part_failed(self) -> None:
        for check in self._health_checks:
            error = check()
            if error is not None:
                raise PartFailed(f"{type(error).__name__}: {error}") from error


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
