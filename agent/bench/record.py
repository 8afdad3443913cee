"""Recording benchmark: what does recording cost the car? (`scripts/bench-record`)

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
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.bench.swap import drive, write_default_config

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

    def median(values: list[float | None]) -> float | None:
        known = [value for value in values if value is not None]
        return round(statistics.median(known), 2) if known else None

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
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_number in range(rounds):
        for mode in modes:
            summary = drive_once(line, mode, seconds, work, settings)
            results[mode].append(summary)
            print(
                f"  {line} {mode} round {round_number + 1}: PPS {summary['pps']:.2f}, latency "
                f"p50 {summary['latency_p50_ms']} ms",
                file=sys.stderr, flush=True,
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
        each["cost_per_round"] = round(statistics.median(per_round), 4) if per_round else None


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", nargs="+", default=list(LINES), choices=LINES)
    parser.add_argument("--seconds", type=float, default=30.0, help="per drive (pilotnet_small)")
    parser.add_argument("--seconds-0005", type=float, default=60.0, help="per drive (model_0005)")
    parser.add_argument("--rounds", type=int, default=3, help="drives per mode (median)")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES),
        help='"off", "hud", "layout", or MODE@FPS for another record.fps (first must be off)',
    )  # fmt: skip
    parser.add_argument(
        "--modes-0005", nargs="+", default=[*MODES, "hud@15"], help="modes for model_0005"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for every drive, e.g. --set record.nice=0",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = [arg for item in args.set for arg in ("--set", item)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="charles-recordbench-") as folder:
        work = Path(folder)
        write_default_config(work)
        for line in args.lines:
            seconds = args.seconds_0005 if line.startswith("model_0005") else args.seconds
            modes = args.modes_0005 if line.startswith("model_0005") else args.modes
            rows.extend(run_line(line, modes, seconds, args.rounds, work, settings))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
