"""`charles bench record`: what does recording cost the car?

For each model line, drives the bundled game with `charles drive` (window capture, the game's
gamepad, unstuck off, swapping off) with recording off, in HUD mode and in layout mode, in
rounds (off, hud, layout, off, hud, layout, ...) so that a machine getting slower or faster
during the run touches every mode alike. Reported per mode, medians over the rounds, from the
drive's own summary: PPS, capture-to-command latency p50/p95, the model's own time, and the
video's frames, repeats, captured frames left out and pictures dropped by the writer.

The goal: recording costs under 5% of PPS (the "cost" column, against recording off).
pilotnet_small predicts on every captured frame (30 PPS) with or without recording, so its
cost shows in latency, if anywhere; model_0005 (2-7 PPS on a small CPU) shares the cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from agent.arguments import positive_float, positive_int
from agent.bench.rounds import interleaved, median
from agent.bench.swap import drive
from agent.bench.workfolder import set_flags, write_config
from agent.config import Config
from agent.errors import CharlesError

LINES = ("pilotnet_small", "model_0005_inceptionresnetv2")
MODES = ("off", "hud", "layout")
"""Recording off, in each mode; "MODE@FPS" records at another record.fps (e.g. hud@15)."""
GOAL = 0.05
PORT = 47920
"""The game's gamepad port for every drive of the benchmark (they run one after another)."""


def drive_once(line: str, mode: str, seconds: float, work: Path, settings: list[str]) -> dict:
    """One drive; its summary. The model is pinned: the shipped reference for pilotnet_small
    (it drives, so the picture moves), fresh weights for model_0005 (none is shipped)."""
    checkpoint = "latest" if line == "pilotnet_small" else "none"
    extra = [
        "--checkpoint", checkpoint, "--set", "swap.policy=off", *settings,
    ]  # fmt: skip
    if mode != "off":
        kind, _, fps = mode.partition("@")
        extra += ["--record", str(work / f"{line}-{kind}.mp4"), "--set", f"record.mode={kind}"]
        if fps:
            extra += ["--set", f"record.fps={fps}"]
    return drive(line, work / "empty-store", seconds, work, extra, PORT)


def row(line: str, mode: str, summaries: list[dict]) -> dict[str, Any]:
    """Medians over the rounds of one line and mode."""
    videos = [summary["recordings"][0] for summary in summaries if summary["recordings"]]
    return {
        "line": line,
        "mode": mode,
        "rounds": len(summaries),
        "pps": median([s["pps"] for s in summaries]),
        "pps_each": [s["pps"] for s in summaries],
        "latency_p50_ms": median([s["latency_p50_ms"] for s in summaries]),
        "latency_p95_ms": median([s["latency_p95_ms"] for s in summaries]),
        "predict_p50_ms": median([s["predict_p50_ms"] for s in summaries]),
        "video_frames": median([v["frames"] for v in videos]),
        "video_seconds": median([v["seconds"] for v in videos]),
        "repeated": median([v["repeated"] for v in videos]),
        "left_out": median([v["left_out"] for v in videos]),
        "dropped": median([v["dropped"] for v in videos]),
        "encoder": videos[0]["encoder"] if videos else None,
        # Share of one core the two recording threads used (drawing + encoding).
        "record_cpu": median(
            [(v["drawing_cpu_s"] + v["encoding_cpu_s"]) / v["seconds"] for v in videos]
        ),
    }


def run_line(
    line: str, modes: list[str], seconds: float, rounds: int, work: Path, settings: list[str]
) -> list[dict]:
    results = interleaved(
        modes, rounds, lambda mode, _round: drive_once(line, mode, seconds, work, settings),
        lambda summary: f"{line}: PPS {summary['pps']:.2f}, latency p50 "
        f"{summary['latency_p50_ms']} ms",
    )  # fmt: skip
    rows = [row(line, mode, results[mode]) for mode in modes]
    add_costs(rows)
    return rows


def add_costs(rows: list[dict[str, Any]]) -> None:
    """Cost against recording off (each line's first row): of the median PPS, and the median
    of each round's cost against the same round's drive without recording (a machine that gets
    slower during the run shows in the first, not in the second)."""
    off = rows[0]
    for each in rows:
        each["cost"] = round(1 - each["pps"] / off["pps"], 4) if off["pps"] else None
        pairs = zip(each["pps_each"], off["pps_each"], strict=True)
        per_round = [1 - pps / off_pps for pps, off_pps in pairs if off_pps]
        each["cost_per_round"] = median(per_round, digits=4)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'line':30} {'mode':7} {'PPS':>6} {'cost':>7} {'/round':>7} {'lat p50':>8} "
        f"{'lat p95':>8} "
        f"{'model':>7} {'video s':>7} {'frames':>6} {'repeat':>6} {'left out':>8} {'dropped':>7} "
        f"{'rec CPU':>7}"
    )
    for each in rows:
        cost = "-" if each["mode"] == "off" else f"{100 * each['cost']:+.1f}%"
        per_round = "-" if each["mode"] == "off" else f"{100 * each['cost_per_round']:+.1f}%"
        mode = each["mode"]
        video = each["mode"] != "off"
        print(
            f"{each['line']:30} {mode:7} {each['pps']:6.2f} {cost:>7} {per_round:>7} "
            f"{_ms(each['latency_p50_ms']):>8} {_ms(each['latency_p95_ms']):>8} "
            f"{_ms(each['predict_p50_ms']):>7} "
            f"{_n(each['video_seconds'], video):>7} {_n(each['video_frames'], video):>6} "
            f"{_n(each['repeated'], video):>6} {_n(each['left_out'], video):>8} "
            f"{_n(each['dropped'], video):>7} {_n(each['record_cpu'], video):>7}"
        )
    print(f"goal: recording costs under {100 * GOAL:.0f}% of PPS (cost = 1 - PPS / PPS off); "
          "/round: median of each round's cost;")  # fmt: skip
    print("rec CPU: cores the two recording threads used; medians over the rounds")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _n(value: float | None, shown: bool) -> str:
    return "-" if value is None or not shown else f"{value:g}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recording benchmark's own flags (--config, --set and --json come from the CLI);
    every --set override goes to every drive, e.g. --set record.nice=0."""
    parser.add_argument("--lines", nargs="+", default=list(LINES), choices=LINES)
    parser.add_argument(
        "--seconds", type=positive_float, default=30.0, help="per drive (pilotnet_small)"
    )
    parser.add_argument(
        "--seconds-0005", type=positive_float, default=60.0, help="per drive (model_0005)"
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="drives per mode (median)")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES),
        help='"off", "hud", "layout", or MODE@FPS for another record.fps (first must be off)',
    )  # fmt: skip
    parser.add_argument(
        "--modes-0005", nargs="+", default=[*MODES, "hud@15"], help="modes for model_0005"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench record` handler: every drive, then a table or one JSON document."""
    for modes, flag in ((args.modes, "--modes"), (args.modes_0005, "--modes-0005")):
        if modes[0] != "off":
            raise CharlesError(f"{flag} must start with off: the costs are against it")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="charles-recordbench-") as folder:
        work = Path(folder)
        write_config(work, config)
        for line in args.lines:
            seconds = args.seconds_0005 if line.startswith("model_0005") else args.seconds
            modes = args.modes_0005 if line.startswith("model_0005") else args.modes
            rows.extend(run_line(line, modes, seconds, args.rounds, work, set_flags(args.set)))
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)
    return 0
