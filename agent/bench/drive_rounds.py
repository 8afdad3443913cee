"""`charles bench drive --rounds N --setting NAME='FLAGS' ...`: the drive benchmark over several
settings in interleaved rounds, with medians: the numbers behind the speed goals (issue 10) and
behind the [inference] defaults.

Each setting is a name and extra `charles bench drive` flags, e.g.
`--setting ort='--model model_0005_inceptionresnetv2 --set inference.backend=onnxruntime'`;
without one, the command as given is the only setting. Every run is a `charles bench drive
--json` of its own (TensorFlow's thread pools are set once per process) in one work folder with
the benchmark's config, its store empty but for fresh weights of each line without a shipped
checkpoint that a setting names, published once, so every round of it drives the same weights
and an ONNX export is made once and cached. Settings run interleaved (see rounds.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bench.rounds import interleaved, medians
from agent.bench.workfolder import charles_command, set_flags, write_config
from agent.config import Config
from agent.errors import CharlesError, one_line

Report = dict[str, Any]
"""One run's `charles bench drive --json` document."""

FIGURES: dict[str, tuple[str, Callable[[Report], float | None]]] = {
    "raw_pps": ("raw PPS", lambda r: r["raw"]["pps"]),
    "drive_pps": ("drive PPS", lambda r: r["drive"]["pps"]),
    "pps_ratio": ("ratio", lambda r: r["pps_ratio"]),
    "capture_fps": ("capture fps", lambda r: r["drive"]["fps"]),
    "raw_p50_ms": ("raw p50", lambda r: r["raw"]["p50_ms"]),
    "latency_p50_ms": ("lat p50", lambda r: r["drive"]["latency_p50_ms"]),
    "latency_p95_ms": ("lat p95", lambda r: r["drive"]["latency_p95_ms"]),
    "latency_p99_ms": ("lat p99", lambda r: r["drive"]["latency_p99_ms"]),
    "shown_p50_ms": ("shown p50", lambda r: _shown(r).get("p50")),
    "shown_p95_ms": ("shown p95", lambda r: _shown(r).get("p95")),
    "shown_p99_ms": ("shown p99", lambda r: _shown(r).get("p99")),
    "grab_p50_ms": ("grab", lambda r: r["drive"]["capture_p50_ms"]),
    "preprocess_p50_ms": ("prep", lambda r: r["drive"]["preprocess_p50_ms"]),
    "naive_pps": ("naive PPS", lambda r: r["naive"]["pps"]),
    "naive_p50_ms": ("naive p50", lambda r: r["naive"]["p50_ms"]),
}
"""Figure key (JSON) -> (table header, the figure of one run's report)."""
GOALS = {"pps_goal_met": "PPS goal", "latency_goal_met": "lat goal"}
"""Goal key of a report -> table header; a setting shows how many of its runs met it."""
PATH_FLAGS = ("checkpoint", "pretrained")
"""Model flags whose value may be a file or folder (else a name: latest, v0003, imagenet)."""


@dataclass(frozen=True)
class Setting:
    """One setting: its name in the table and its extra `charles bench drive` flags."""

    name: str
    flags: tuple[str, ...]


def parse_setting(text: str) -> Setting:
    """`NAME=FLAGS` (FLAGS split as a shell splits them) -> a Setting."""
    name, equals, flags = text.partition("=")
    if not equals or not name.strip():
        raise CharlesError(f"--setting takes NAME='FLAGS', e.g. ort='--set inference.backend="
                           f"onnxruntime', not {one_line(text)!r}")  # fmt: skip
    try:
        return Setting(name.strip(), tuple(shlex.split(flags)))
    except ValueError as error:
        raise CharlesError(f"--setting {name.strip()}: {error} in {one_line(flags)!r}") from None


def run_settings(args: argparse.Namespace, config: Config) -> int:
    """Every setting in `args.rounds` interleaved rounds; a table of medians or one JSON
    document (each setting's medians, goal counts and every run's report)."""
    settings = [parse_setting(text) for text in args.setting or []] or [Setting("as given", ())]
    names = [setting.name for setting in settings]
    if len(set(names)) != len(names):
        raise CharlesError(f"--setting names must differ: {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="charles-bench-drive-") as folder:
        work = Path(folder)
        config_file = write_config(work, config)
        store = work / "models"
        own = [*_forwarded(args), *(flag for setting in settings for flag in setting.flags)]
        _publish_fresh_weights(store, [config.model.line], own)
        common = charles_command(
            "bench", "drive", "--json", "--config", str(config_file), "--store", str(store),
            "--seconds", str(args.seconds), "--raw-seconds", str(args.raw_seconds),
            "--naive-seconds", str(args.naive_seconds), *_forwarded(args),
        )  # fmt: skip
        by_name = {setting.name: setting for setting in settings}
        runs = interleaved(
            names,
            args.rounds,
            lambda name, number: _run_once([*common, *by_name[name].flags], work, name, number),
            lambda report: (
                f"drive PPS {report['drive']['pps']}, capture->command p50 "
                f"{report['drive']['latency_p50_ms']} ms"
            ),
        )
    rows = [summarise(by_name[name], runs[name]) for name in names]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "settings": rows}))
    else:
        print_table(rows, args.rounds, args.seconds)
    return 0


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The command's own --set and model flags, for every run; paths made absolute, as the
    runs start in the work folder."""
    flags = set_flags(args.set)
    for dest in ("model", "pretrained", "checkpoint", "store"):
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "store" or (dest in PATH_FLAGS and os.path.exists(value)):
            value = os.path.abspath(value)
        flags += [f"--{dest}", value]
    return flags


def _publish_fresh_weights(store: Path, lines: Sequence[str], flags: Sequence[str]) -> None:
    """Fresh weights, once, for each line without a shipped checkpoint that `lines` or any of
    `flags` names (--model LINE, --set model.line=LINE)."""
    from agent.checkpoints.publish import publish
    from agent.checkpoints.reference import reference_checkpoint
    from agent.nets.registry import LINE_NAMES, get_line

    for name in LINE_NAMES:
        named = name in lines or any(name in flag for flag in flags)
        if named and reference_checkpoint(name) is None:
            line = get_line(name)
            publish(line.build("none"), store, name, batches=0, note="bench drive: fresh weights")


def _run_once(command: list[str], work: Path, name: str, number: int) -> Report:
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise CharlesError(
            f"setting {name}, round {number + 1}: charles bench drive failed "
            f"({done.returncode}): {one_line(said[-1], 300)}"
        )
    report: Report = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def summarise(setting: Setting, runs: list[Report]) -> dict[str, Any]:
    """One setting's row: medians of every figure, how many runs met each goal, the runs."""
    figures = {key: figure for key, (_, figure) in FIGURES.items()}
    met = {key: sum(bool(run[key]) for run in runs) for key in GOALS}
    return {"setting": setting.name, "flags": list(setting.flags), **medians(runs, figures),
            **met, "runs": runs}  # fmt: skip


def print_table(rows: list[dict[str, Any]], rounds: int, seconds: float) -> None:
    headers = ["setting", *(header for header, _ in FIGURES.values()), *GOALS.values()]
    cells = [
        [row["setting"], *(_f(row[key]) for key in FIGURES),
         *(f"{row[key]}/{len(row['runs'])}" for key in GOALS)]
        for row in rows
    ]  # fmt: skip
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    for line in (headers, *cells):
        print("  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)))
    print(f"medians of {rounds} runs of {seconds:g} s drives; ms unless named; 'goal' columns: "
          "runs that met it")  # fmt: skip
    for row in rows:
        runs = row["runs"]
        each = {
            "drive PPS": [run["drive"]["pps"] for run in runs],
            "raw PPS": [run["raw"]["pps"] for run in runs],
            "lat p50": [run["drive"]["latency_p50_ms"] for run in runs],
        }
        listed = (f"{what} {' / '.join(map(_f, values))}" for what, values in each.items())
        print(f"{row['setting']} per run: {'; '.join(listed)}")


def _shown(report: Report) -> dict[str, Any]:
    return report["drive"].get("render_to_command_ms") or {}


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
