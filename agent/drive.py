"""`charles drive`: the composition root of a drive session.

It wires capture -> drive loop -> controller, plus hotkeys, the live console and (for the
bundled game) the game process, and guarantees the way out: whatever ends the session (time
limit, quit hotkey, Ctrl-C, SIGTERM, an exception in any thread, the game closing), the
controller goes neutral and releases every key before anything else is torn down. A stop signal
during start-up (waiting for the window, loading the model) ends it at once, before any input.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from agent.capture import Grabber
from agent.config import Config
from agent.console import RateMeter, render
from agent.control import ControlMapper
from agent.controllers import open_controller
from agent.display import display_for_this_process
from agent.game.launcher import BundledGame, connect_or_launch
from agent.game.telemetry import read_last_telemetry
from agent.hotkeys import Hotkeys
from agent.loop import DriveLoop, failure_to_raise
from agent.nets.registry import get_line
from agent.predictor import Predictor
from agent.preprocess import preprocess
from agent.reference import checkpoint_to_drive
from agent.signals import Stop, on_stop_signals
from agent.slot import Slot
from agent.summary import DriveSummary, median_ms, percentiles_ms
from agent.target import acquire_window, is_bundled_game
from agent.types import Frame, Tick

log = logging.getLogger(__name__)

USER_STOPS = ("time limit", "quit hotkey", "SIGINT", "SIGTERM")
"""Stop reasons a person asked for; any other end with a loop error reports that error."""


def run_drive(config: Config, seconds: float | None, live_console: bool) -> DriveSummary:
    """Drive until a stop reason; returns the summary.

    Raises CharlesError for user problems and StopRequested when a stop signal came during
    start-up (nothing was driven then).
    """
    stop = Stop()
    with contextlib.ExitStack() as stack:
        stack.enter_context(on_stop_signals(stop.on_signal))
        with stop.interrupting():
            stack.enter_context(display_for_this_process())
            line = get_line(config.model.line)
            checkpoint = checkpoint_to_drive(config)
            game = None
            if is_bundled_game(config):
                game = connect_or_launch(
                    config.game.channel_port, config.capture.size, config.game.launch, stack
                )
            window = acquire_window(config, game, stop)
            # Load and warm the model before any input is sent, so the first command is not late.
            log.info("loading %s", checkpoint.name if checkpoint else f"a fresh {line.name}")
            predictor = Predictor.load(line.name, checkpoint, config.model.pretrained)

            frames: Slot[Frame] = Slot()
            grabber = Grabber(window, config.capture.fps, frames)
            grabber.start()
            stack.callback(grabber.stop)

            controller = open_controller(
                config.controller, config.game.channel_port, window.has_focus
            )
            # Registered after the grabber, so it runs before it: neutral first, then teardown.
            stack.callback(controller.close)

            ticks: Slot[Tick] = Slot()
            hotkeys = Hotkeys({
                config.hotkeys.pause: lambda: loop.toggle_pause(),
                config.hotkeys.quit: partial(stop, "quit hotkey"),
            })  # fmt: skip
            loop = DriveLoop(
                frames=frames,
                window_ready=lambda: not grabber.window_lost.is_set(),
                to_model_input=partial(
                    preprocess,
                    capture_size=config.capture.size,
                    crop=config.capture.crop,
                    input_size=line.input_size,
                ),
                predictor=predictor,
                mapper=ControlMapper.from_config(config.controller),
                controller=controller,
                hz=config.capture.fps,
                ticks=ticks,
                health_checks=[
                    lambda: grabber.error,
                    lambda: getattr(controller, "error", None),
                    lambda: hotkeys.error,
                ],
            )
            hotkeys.start()
            stack.callback(hotkeys.stop)
            stop.raise_if_requested()  # e.g. the quit hotkey, pressed while starting

        # From here on a signal only sets `stop`: the loop must not be interrupted mid-send.
        thread = threading.Thread(target=loop.run, name="drive-loop", daemon=True)
        started = time.monotonic()
        thread.start()
        stack.callback(_join_loop, loop, thread)
        log.info("driving %r with %s via %s", window.title, predictor.name, controller.name)
        meter = RateMeter(lambda: grabber.frames_grabbed, lambda: loop.counters.predictions)
        view = partial(
            render, model_name=predictor.name, backend=controller.name, window=window.title
        )
        _wait_for_stop(stop, loop, game, seconds, started, ticks, meter, view, live_console)
        # Read while the agent still drives: once the loop stops, the pad goes neutral and the
        # game's next sample would say nobody is driving.
        telemetry = game.telemetry if game is not None else None
        game_state = read_last_telemetry(telemetry) if telemetry else None
        _join_loop(loop, thread)
        elapsed = time.monotonic() - started
        if loop.error is not None and stop.reason not in USER_STOPS:
            raise failure_to_raise(loop.error)
        latency_p50, latency_p95 = percentiles_ms(loop.counters.latencies, (50, 95))
        frames_grabbed = grabber.frames_grabbed
        return DriveSummary(
            model=predictor.name,
            controller=controller.name,
            window=window.title,
            stopped_by=stop.reason or "drive loop ended",
            seconds=round(elapsed, 3),
            frames=frames_grabbed,
            predictions=loop.counters.predictions,
            fps=round(frames_grabbed / elapsed, 2) if elapsed > 0 else 0.0,
            pps=round(loop.counters.predictions / elapsed, 2) if elapsed > 0 else 0.0,
            latency_p50_ms=latency_p50,
            latency_p95_ms=latency_p95,
            predict_p50_ms=median_ms(loop.counters.predict_seconds),
            lagged_ticks=loop.lagged,
            nonfinite_predictions=loop.counters.nonfinite,
            deadman_releases=controller.releases,
            game=game_state,
        )


def _join_loop(loop: DriveLoop, thread: threading.Thread) -> None:
    loop.stop()
    if thread.is_alive():
        thread.join(timeout=5.0)


def _wait_for_stop(
    stop: Stop,
    loop: DriveLoop,
    game: BundledGame | None,
    seconds: float | None,
    started: float,
    ticks: Slot[Tick],
    meter: RateMeter,
    view: Callable[..., Any],
    live_console: bool,
) -> None:
    """The main thread's job while driving: watch for stop reasons and draw the console."""
    deadline = None if seconds is None else started + seconds
    live: Any = contextlib.nullcontext()
    if live_console:
        from rich.live import Live

        live = Live(view(None, meter.rates), refresh_per_second=4, transient=False)
    with live:
        while not stop.event.wait(0.25):
            if deadline is not None and time.monotonic() >= deadline:
                stop("time limit")
            elif loop.stopping:
                stop("drive loop ended")
            elif game is not None and game.exited():
                stop("the game closed")
            if live_console:
                live.update(view(ticks.get()[0], meter.update()))
