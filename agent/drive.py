"""`charles drive`: the composition root of a drive session.

It wires capture -> drive loop -> controller, plus hotkeys, the live console and (for the
bundled game) the game process, and guarantees the way out: whatever ends the session (time
limit, quit hotkey, Ctrl-C, SIGTERM, an exception in any thread, the game closing), the
controller goes neutral and releases every key before anything else is torn down.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from agent.capture import GameWindow, Grabber, WindowError, find_window, fixed_region
from agent.config import Config
from agent.console import RateMeter, render
from agent.control import ControlMapper
from agent.controllers import open_controller
from agent.display import display_for_this_process
from agent.errors import CharlesError
from agent.game.host import WINDOW_TITLE as BUNDLED_GAME_TITLE
from agent.game.telemetry import read_last_telemetry
from agent.hotkeys import Hotkeys
from agent.loop import DriveLoop, PartFailed
from agent.nets.registry import get_line
from agent.predictor import Predictor
from agent.preprocess import preprocess
from agent.processes import stop_process
from agent.signals import on_stop_signals
from agent.slot import Slot
from agent.store import resolve
from agent.types import Frame, Tick

log = logging.getLogger(__name__)

GAME_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class DriveSummary:
    """The end-of-run report (times in seconds, rates per second, latencies in ms)."""

    model: str
    controller: str
    window: str
    stopped_by: str
    seconds: float
    frames: int
    predictions: int
    fps: float
    pps: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    lagged_ticks: int
    nonfinite_predictions: int
    game: dict[str, Any] | None
    """The bundled game's last telemetry sample (score, distance, ...) when Charles started it."""

    def lines(self) -> list[str]:
        """The summary as text for a person."""
        lines = [
            f"drove {self.window!r} with {self.model} via {self.controller} "
            f"for {self.seconds:.1f} s (stopped by {self.stopped_by})",
            f"  frames {self.frames}  predictions {self.predictions}  "
            f"FPS {self.fps:.1f}  PPS {self.pps:.1f}",
        ]
        if self.latency_p50_ms is not None and self.latency_p95_ms is not None:
            lines.append(
                f"  latency capture->command p50 {self.latency_p50_ms:.1f} ms  "
                f"p95 {self.latency_p95_ms:.1f} ms  late ticks {self.lagged_ticks}"
            )
        if self.nonfinite_predictions:
            lines.append(f"  non-finite predictions (sent neutral): {self.nonfinite_predictions}")
        if self.game:
            game = self.game
            lines.append(
                f"  game: score {game.get('score', 0):.1f}  "
                f"distance {game.get('distance', 0):.1f} m  "
                f"tiles {100 * game.get('tiles', 0):.0f}%  episode {game.get('episode')}"
            )
        return lines


class _Stop:
    """Why the session ended; the first reason wins."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()


def run_drive(config: Config, seconds: float | None, live_console: bool) -> DriveSummary:
    """Drive until a stop reason; returns the summary. Raises CharlesError for user problems."""
    stop = _Stop()
    with contextlib.ExitStack() as stack:
        stack.enter_context(on_stop_signals(stop))
        stack.enter_context(display_for_this_process())
        line = get_line(config.model.line)
        checkpoint = resolve(Path(config.model.store), line.name, config.model.checkpoint)
        game, telemetry = _launch_game_if_needed(config, stack)
        window = _acquire_window(config, game)
        # Load and warm the model before any input is sent, so the first command is not late.
        predictor = Predictor.load(line.name, checkpoint, config.model.pretrained)

        frames: Slot[Frame] = Slot()
        grabber = Grabber(window, config.capture.fps, frames)
        grabber.start()
        stack.callback(grabber.stop)

        controller = open_controller(config.controller, config.game.channel_port, window.has_focus)
        # Registered after the grabber, so it runs before it: neutral first, then teardown.
        stack.callback(controller.close)

        to_model_input = partial(
            preprocess,
            capture_size=config.capture.size,
            crop=config.capture.crop,
            input_size=line.input_size,
        )
        ticks: Slot[Tick] = Slot()
        hotkeys = Hotkeys({
            config.hotkeys.pause: lambda: loop.toggle_pause(),
            config.hotkeys.quit: partial(stop, "quit hotkey"),
        })  # fmt: skip
        loop = DriveLoop(
            frames=frames,
            window_ready=lambda: not grabber.window_lost.is_set(),
            to_model_input=to_model_input,
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

        thread = threading.Thread(target=loop.run, name="drive-loop", daemon=True)
        started = time.monotonic()
        thread.start()
        stack.callback(_join_loop, loop, thread)
        meter = RateMeter(lambda: grabber.frames_grabbed, lambda: loop.counters.predictions)
        view = partial(
            render, model_name=predictor.name, backend=controller.name, window=window.title
        )
        _wait_for_stop(stop, loop, game, seconds, started, ticks, meter, view, live_console)
        # Read while the agent still drives: once the loop stops, the pad goes neutral and the
        # game's next sample would say nobody is driving.
        game_state = read_last_telemetry(telemetry) if telemetry else None
        _join_loop(loop, thread)
        elapsed = time.monotonic() - started
        if loop.error is not None and stop.reason in (None, "drive loop ended"):
            # A part's user-facing error (e.g. the X server went away) keeps its own message.
            cause = loop.error.__cause__ if isinstance(loop.error, PartFailed) else loop.error
            if isinstance(cause, CharlesError):
                raise cause
            raise CharlesError(f"driving stopped: {loop.error}") from loop.error
        summary = _summarise(
            predictor.name, controller.name, window.title, stop.reason or "drive loop ended",
            elapsed, grabber.frames_grabbed, loop, game_state,
        )  # fmt: skip
    return summary


def _join_loop(loop: DriveLoop, thread: threading.Thread) -> None:
    loop.stop()
    if thread.is_alive():
        thread.join(timeout=5.0)


def _wait_for_stop(
    stop: _Stop,
    loop: DriveLoop,
    game: subprocess.Popen[bytes] | None,
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
            elif game is not None and game.poll() is not None:
                stop("the game closed")
            if live_console:
                live.update(view(ticks.get()[0], meter.update()))


def _is_bundled_game(config: Config) -> bool:
    return config.game.title == BUNDLED_GAME_TITLE and not config.game.region


def _launch_game_if_needed(
    config: Config, stack: contextlib.ExitStack
) -> tuple[subprocess.Popen[bytes] | None, Path | None]:
    """Start the bundled game when it is the target, `launch` is on and it is not open yet."""
    if not (_is_bundled_game(config) and config.game.launch):
        return None, None
    with contextlib.suppress(WindowError):
        find_window(config.game.title, config.game.match)
        return None, None  # already open: drive it, leave it open
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charles-game-")))
    telemetry = folder / "telemetry.jsonl"
    width, height = config.capture.size
    command = [
        sys.executable, "-m", "agent.game", "--size", f"{width}x{height}",
        "--port", str(config.game.channel_port), "--telemetry", str(telemetry),
    ]  # fmt: skip
    log.info("starting the bundled game")
    game = subprocess.Popen(command, stderr=subprocess.PIPE)
    stack.callback(stop_process, game, 10.0)
    return game, telemetry


def _acquire_window(config: Config, game: subprocess.Popen[bytes] | None) -> GameWindow:
    if config.game.region:
        return fixed_region(*config.game.region)
    if game is None:
        return find_window(config.game.title, config.game.match)
    deadline = time.monotonic() + GAME_START_TIMEOUT
    while True:
        if game.poll() is not None:
            error = (game.stderr.read() if game.stderr else b"").decode(errors="replace")
            last = error.strip().splitlines()[-1] if error.strip() else f"exit {game.returncode}"
            raise CharlesError(f"the bundled game did not start: {last}")
        try:
            return find_window(config.game.title, config.game.match)
        except WindowError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _summarise(
    model: str,
    controller: str,
    window: str,
    stopped_by: str,
    elapsed: float,
    frames: int,
    loop: DriveLoop,
    game_state: dict[str, Any] | None,
) -> DriveSummary:
    latencies = np.asarray(loop.counters.latencies) * 1000.0
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies.size else (None, None)
    return DriveSummary(
        model=model,
        controller=controller,
        window=window,
        stopped_by=stopped_by,
        seconds=round(elapsed, 3),
        frames=frames,
        predictions=loop.counters.predictions,
        fps=round(frames / elapsed, 2) if elapsed > 0 else 0.0,
        pps=round(loop.counters.predictions / elapsed, 2) if elapsed > 0 else 0.0,
        latency_p50_ms=None if p50 is None else round(float(p50), 2),
        latency_p95_ms=None if p95 is None else round(float(p95), 2),
        lagged_ticks=loop.lagged,
        nonfinite_predictions=loop.counters.nonfinite,
        game=game_state,
    )
