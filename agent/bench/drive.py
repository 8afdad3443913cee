"""`charles bench drive`: is the drive loop as fast as its model, and how far ahead of the naive
loop of earlier game-driving projects?

One run, one model, one game window, three measurements while the bundled game runs (so all
three see the same machine under the same game):
1. raw: the predictor alone, in a tight loop, on a fixed real frame of the game: the physical
   limit (PPS and latency p50/p95/p99);
2. drive: `charles drive` itself (capture thread, frame-driven loop, the game's gamepad) for
   the given time: its PPS and their ratio to raw, capture-to-command and render-to-command
   latency, grab and preprocessing time per frame;
3. naive: the synchronous loop of earlier projects on the same window and weights: grab,
   `cv2.resize`, Keras `model.predict`, send, repeat.

Goals (issue 10): drive PPS at least 0.95 x raw PPS, or for a line faster than the game, equal
to the game's new frames per second; capture-to-command p50 within the raw p50 + 5 ms.

With --rounds or --setting it runs in rounds over several settings instead (drive_rounds.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from agent.arguments import positive_float, positive_int
from agent.capture.screen import open_mss
from agent.capture.window import GameWindow
from agent.checkpoints.reference import checkpoint_to_drive
from agent.config import Config
from agent.drive.control import ControlMapper
from agent.drive.summary import DriveSummary, percentiles_ms
from agent.drive.target import acquire_window, is_bundled_game
from agent.errors import CharlesError
from agent.game.channel import GamepadSender
from agent.game.launcher import connect_or_launch
from agent.inference.onnx_backend import check_installed
from agent.inference.predictor import Predictor
from agent.inference.preprocess import preprocess
from agent.nets.runtime import configure_threads
from agent.runtime.display import display_for_this_process
from agent.runtime.signals import Stop
from agent.types import NEUTRAL

log = logging.getLogger(__name__)

PPS_GOAL = 0.95
"""Drive-loop PPS at least this share of the raw predictor's (or of the game's frame rate)."""
LATENCY_GOAL_MS = 5.0
"""Capture-to-command p50 at most the raw predictor's p50 plus this."""


@dataclass(frozen=True)
class Rates:
    """Predictions per second and latency percentiles of one measurement (ms)."""

    predictions: int
    seconds: float
    pps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class DriveBench:
    """What `charles bench drive` reports (JSON as is; a table for a person)."""

    line: str
    model: str
    backend: str
    raw: Rates
    drive: dict[str, Any]
    """The drive's numbers: pps, fps, latency and render-to-command percentiles, grab and
    preprocessing medians, frames skipped and requested."""
    naive: Rates
    pps_ratio: float
    """Drive PPS / raw PPS."""
    pps_goal: float
    """PPS the drive had to reach: 0.95 x min(raw PPS, the capture's frames per second)."""
    latency_goal_ms: float | None
    """Raw p50 + 5 ms."""
    pps_goal_met: bool
    latency_goal_met: bool

    def table_rows(self) -> list[tuple[str, ...]]:
        drive, raw, naive = self.drive, self.raw, self.naive
        shown = drive.get("render_to_command_ms") or {}
        return [
            ("raw model", _f(raw.pps), _f(raw.p50_ms), _f(raw.p95_ms),
             _f(raw.p99_ms), "-", "-", "-"),
            ("charles drive", _f(drive["pps"]), _f(drive["latency_p50_ms"]),
             _f(drive["latency_p95_ms"]), _f(drive["latency_p99_ms"]), _f(shown.get("p50")),
             _f(shown.get("p95")), _f(shown.get("p99"))),
            ("naive loop", _f(naive.pps), _f(naive.p50_ms),
             _f(naive.p95_ms), _f(naive.p99_ms), "-", "-", "-"),
        ]  # fmt: skip

    def verdict(self) -> list[str]:
        drive = self.drive
        return [
            f"drive PPS {drive['pps']:.2f} = {self.pps_ratio:.3f} x raw (capture {drive['fps']:.1f}"
            f" fps); goal {self.pps_goal:.2f}: {'met' if self.pps_goal_met else 'NOT met'}",
            f"capture->command p50 {_f(drive['latency_p50_ms'])} ms; goal raw p50 + "
            f"{LATENCY_GOAL_MS:.0f} = {_f(self.latency_goal_ms)} ms: "
            f"{'met' if self.latency_goal_met else 'NOT met'}",
            f"per frame: grab {_f(drive['capture_p50_ms'])} ms, preprocess "
            f"{_f(drive['preprocess_p50_ms'])} ms, model in the loop {_f(drive['predict_p50_ms'])}"
            f" ms; {drive['skipped_frames']} frames skipped, {drive['requested_frames']} grabbed "
            "early for the model",
            f"naive loop: {self.naive.pps:.2f} PPS, p50 {_f(self.naive.p50_ms)} ms "
            f"({drive['pps'] / max(self.naive.pps, 1e-9):.1f} x fewer predictions than the drive)",
        ]


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_drive_bench(
    config: Config, seconds: float, raw_seconds: float, naive_seconds: float
) -> DriveBench:
    """Measure raw, drive and naive on the bundled game (see the module docstring)."""
    from agent.session import run_drive

    if not is_bundled_game(config):
        raise CharlesError(
            "charles bench drive measures against the bundled game: leave game.title and "
            "game.region at their defaults"
        )
    check_installed(config.inference)
    checkpoint = checkpoint_to_drive(config)
    # The drive must run exactly what raw and naive run, undisturbed: no swaps, no recoveries.
    pinned = str(checkpoint.folder) if checkpoint is not None else "none"
    drive_config = _with(config, model={"checkpoint": pinned}, swap={"policy": "off"},
                         unstuck={"enabled": False})  # fmt: skip
    stop = Stop()
    with contextlib.ExitStack() as stack:
        stack.enter_context(display_for_this_process())
        game = connect_or_launch(config.game.channel_port, config.capture.size, True, stack,
                                 extra_args=["--stamp"])  # fmt: skip
        window = acquire_window(config, game, stop)
        configure_threads(config.inference)
        predictor = Predictor.load(
            config.model.line, checkpoint, config.model.pretrained, inference=config.inference
        )
        log.info("raw: %s alone for %.0f s", predictor.name, raw_seconds)
        frame = _model_input_of(window, config, predictor)
        raw = _raw(predictor, frame, raw_seconds)
        log.info("drive: charles drive for %.0f s", seconds)
        summary = run_drive(drive_config, seconds, live_console=False, stamped_game=True)
        log.info("naive: grab, resize, model.predict, send for %.0f s", naive_seconds)
        naive = _naive(predictor, window, config, naive_seconds)
    return _result(predictor, raw, summary, naive)


def _with(config: Config, **sections: dict[str, Any]) -> Config:
    changes = {
        name: dataclasses.replace(getattr(config, name), **values)
        for name, values in sections.items()
    }
    return dataclasses.replace(config, **changes)


def _model_input_of(window: GameWindow, config: Config, predictor: Predictor) -> np.ndarray:
    """One real frame of the game, as the model sees it."""
    region = window.region()
    with open_mss() as sct:
        shot = sct.grab(_box(region))
    image = np.frombuffer(shot.raw, np.uint8).reshape(shot.height, shot.width, 4)
    return preprocess(image, config.capture.size, config.capture.crop, predictor.line.input_size)


def _raw(predictor: Predictor, frame: np.ndarray, seconds: float) -> Rates:
    latencies: list[float] = []
    start = time.perf_counter()
    while not latencies or time.perf_counter() - start < seconds:
        latencies.append(predictor.predict(frame).seconds)
    return _rates(latencies, time.perf_counter() - start)


def _naive(predictor: Predictor, window: GameWindow, config: Config, seconds: float) -> Rates:
    """Earlier projects' loop: everything in sequence, Keras's `model.predict` per frame."""
    model = predictor.model
    height, width = predictor.line.input_shape[:2]
    mapper = ControlMapper.from_config(config.controller)
    sender = GamepadSender(config.game.channel_port)
    latencies: list[float] = []
    # Its first call builds Keras's predict function: warm it, as a fair baseline would.
    model.predict(np.zeros((1, height, width, 3), np.uint8), verbose=0)
    try:
        with open_mss() as sct:
            box = _box(window.region())
            start = time.perf_counter()
            while not latencies or time.perf_counter() - start < seconds:
                grabbed = time.perf_counter()
                shot = sct.grab(box)
                image = np.frombuffer(shot.raw, np.uint8).reshape(shot.height, shot.width, 4)
                small = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), (width, height))
                throttle, steering = model.predict(small[np.newaxis], verbose=0)[:2]
                sender.send(mapper.map(float(throttle[0, 0]), float(steering[0, 0])))
                latencies.append(time.perf_counter() - grabbed)
            total = time.perf_counter() - start
    finally:
        sender.send(NEUTRAL)
        sender.close()
    return _rates(latencies, total)


def _box(region: Any) -> dict[str, int]:
    return {"left": region.left, "top": region.top, "width": region.width,
            "height": region.height}  # fmt: skip


def _rates(latencies: list[float], seconds: float) -> Rates:
    p50, p95, p99 = percentiles_ms(latencies, (50, 95, 99))
    return Rates(
        len(latencies), round(seconds, 3), round(len(latencies) / seconds, 2), p50, p95, p99
    )


def _result(predictor: Predictor, raw: Rates, summary: DriveSummary, naive: Rates) -> DriveBench:
    values = summary.to_json()
    drive = {
        key: values[key]
        for key in (
            "seconds", "frames", "predictions", "fps", "pps", "latency_p50_ms",
            "latency_p95_ms", "latency_p99_ms", "predict_p50_ms", "capture_p50_ms",
            "preprocess_p50_ms", "skipped_frames", "requested_frames", "render_to_command_ms",
        )
    }  # fmt: skip
    return DriveBench(
        line=predictor.line.name,
        model=predictor.name,
        backend=predictor.backend,
        raw=raw,
        drive=drive,
        naive=naive,
        **judge(raw, summary.pps, summary.fps, summary.latency_p50_ms),
    )


def judge(
    raw: Rates, pps: float, fps: float, latency_p50_ms: float | None
) -> dict[str, float | bool | None]:
    """The drive's goals from the raw model's rates and the drive's PPS, capture FPS and
    capture->command p50: DriveBench's pps_ratio, pps_goal, latency_goal_ms and whether each
    goal was met."""
    # A line faster than the capture can only predict on each new frame: that is its limit.
    limit = min(raw.pps, fps) if fps > 0 else raw.pps
    goal = PPS_GOAL * limit
    latency_goal = raw.p50_ms + LATENCY_GOAL_MS if raw.p50_ms is not None else None
    return {
        "pps_ratio": round(pps / raw.pps, 3) if raw.pps else 0.0,
        "pps_goal": round(goal, 2),
        "latency_goal_ms": round(latency_goal, 2) if latency_goal is not None else None,
        "pps_goal_met": pps >= goal,
        "latency_goal_met": latency_p50_ms is not None
        and latency_goal is not None
        and latency_p50_ms <= latency_goal,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The drive benchmark's own flags (--config, --set, the model flags and --json come from
    the CLI)."""
    parser.add_argument(
        "--seconds", type=positive_float, default=30.0, help="driving time (default 30)"
    )
    parser.add_argument("--raw-seconds", type=positive_float, default=10.0,
                        help="time the predictor runs alone (default 10)")  # fmt: skip
    parser.add_argument("--naive-seconds", type=positive_float, default=15.0,
                        help="time of the naive loop (default 15)")  # fmt: skip
    parser.add_argument(
        "--rounds", type=positive_int, default=1,
        help="runs of each setting, interleaved; medians over them (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--setting", action="append", metavar="NAME='FLAGS'",
        help="one setting to compare: a name and extra flags for every run of it, e.g. "
        "ort='--set inference.backend=onnxruntime' (repeatable; each run in a process of its "
        "own)",
    )  # fmt: skip


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench drive` handler: one run here, or rounds over settings."""
    if args.setting or args.rounds > 1:
        from agent.bench.drive_rounds import run_settings

        return run_settings(args, config)
    result = run_drive_bench(config, args.seconds, args.raw_seconds, args.naive_seconds)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print_table(result)
    return 0


def print_table(result: DriveBench) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"charles bench drive: {result.model} on {result.backend}, batch 1")
    table.add_column("")
    for column in ("PPS", "p50 ms", "p95 ms", "p99 ms", "shown p50", "shown p95", "shown p99"):
        table.add_column(column, justify="right")
    for row in result.table_rows():
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        "raw model: the predictor alone on a fixed frame; naive loop: grab, resize, "
        "model.predict, send in sequence. p50..p99: capture -> command sent; shown: the game "
        "showing the picture -> the command in its physics"
    )
    for line in result.verdict():
        console.print(line)
