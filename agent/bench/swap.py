"""`charles bench swap`: can anyone see a hot swap?

For each model line, drives the bundled game with `charles drive` (window capture, the game's
gamepad, unstuck off) several times in one run: once with nothing published, then while a new
checkpoint lands in the store every few seconds, with the loader at each niceness asked for. New
versions are prepared before driving and renamed into the store (one atomic step each, as
`charles train` publishes), so the benchmark measures the swap, not the publishing.

Reported per drive, from the drive's own summary: PPS, the median gap between successive
commands and the largest gap outside swaps, the largest gap during swaps (a gap overlapping a
background load or the switch itself), the rate of commands during loads, and the swaps and
their background load times. The goal: largest gap during swaps <= 1.5 x the median gap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from agent.arguments import positive_float
from agent.bench.rounds import median
from agent.bench.workfolder import charles_command, set_flags, write_config
from agent.checkpoints.manifest import MANIFEST_FILE
from agent.checkpoints.publish import publish
from agent.config import Config
from agent.errors import CharlesError

LINES = ("pilotnet_small", "model_0005_inceptionresnetv2")
GOAL = 1.5


def prepare_versions(store: Path, line: str, count: int) -> list[Path]:
    """Publish v0001 of `line` (fresh weights) and `count` later versions staged outside the
    store (copies of it with their own version and batch count) to rename in while driving."""
    from agent.nets.registry import get_line

    model = get_line(line).build("none")
    first = publish(model, store, line, batches=1, note="swap benchmark").folder
    staged = []
    for number in range(2, count + 2):
        folder = store / f".staged-{line}-{number}"
        shutil.copytree(first, folder)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest.update(version=f"v{number:04d}", batches=number * 100)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
        staged.append(folder)
    return staged


def release_versions(staged: list[Path], root: Path, every: float, stop: threading.Event) -> None:
    """Rename the staged versions into the store one by one, `every` seconds apart."""
    for folder in staged:
        if stop.wait(every):
            return
        number = int(folder.name.rsplit("-", 1)[1])
        os.rename(folder, root / f"v{number:04d}")


def drive(
    line: str,
    store: Path,
    seconds: float,
    work: Path,
    extra: list[str],
    port: int,
    started: threading.Event | None = None,
) -> dict[str, Any]:
    """`charles drive` for `seconds`; its JSON summary. `started` is set once it drives."""
    command = charles_command(
        "drive", "--config", str(work / "config.toml"),
        "--model", line, "--seconds", str(seconds), "--json",
        "--set", f"model.store={json.dumps(str(store))}", "--set", "unstuck.enabled=false",
        "--set", f"game.channel_port={port}", "--set", "controller.hold=5.0",
        "--set", "swap.poll_seconds=0.5", *extra,
    )  # fmt: skip
    log_path = work / f"drive-{line}-{len(list(work.glob('drive-*.log')))}.log"
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work
    )
    assert process.stdout is not None and process.stderr is not None
    with log_path.open("w") as log:
        for text in process.stderr:
            log.write(text)
            if started is not None and "agent.session: driving" in text:
                started.set()
    out = process.stdout.read()
    if process.wait() != 0:
        raise CharlesError(f"charles drive failed ({process.returncode}); see {log_path}")
    return json.loads(out.strip().splitlines()[-1])


def run_line(
    line: str, seconds: float, every: float, nices: list[int], work: Path, settings: list[str]
) -> list[dict]:
    """The drives of one line; `settings` are --set arguments for every drive."""
    rows = []
    port = 47900
    store = work / f"store-{line}"
    prepare_versions(store, line, 0)
    summary = drive(line, store, seconds, work, [*settings, "--set", "swap.policy=off"], port)
    rows.append(_row(line, "no swaps", summary))
    for nice in nices:
        store = work / f"store-{line}-nice{nice}"
        staged = prepare_versions(store, line, int(seconds / every) + 2)
        started, stop = threading.Event(), threading.Event()
        # Versions land only once the drive has started (TensorFlow, two model copies, the
        # game): one landing during start-up would simply be the one it starts with.
        publisher = threading.Thread(
            target=_publish_once_driving, args=(staged, store / line, every, started, stop),
            daemon=True,
        )  # fmt: skip
        publisher.start()
        try:
            extra = [*settings, "--set", f"swap.nice={nice}"]
            summary = drive(line, store, seconds, work, extra, port, started)
        finally:
            stop.set()
            started.set()
            publisher.join()
        rows.append(_row(line, f"swaps (loader nice {nice})", summary))
    return rows


def _publish_once_driving(
    staged: list[Path], root: Path, every: float, started: threading.Event, stop: threading.Event
) -> None:
    started.wait(timeout=900)
    release_versions(staged, root, every, stop)


def _row(line: str, mode: str, summary: dict[str, Any]) -> dict[str, Any]:
    gaps = summary.get("command_gaps") or {}
    loads = [swap["load_s"] for swap in summary.get("swaps", [])]
    return {
        "line": line,
        "mode": mode,
        "seconds": summary["seconds"],
        "pps": summary["pps"],
        "median_gap_ms": gaps.get("median_ms"),
        "largest_outside_ms": gaps.get("largest_outside_ms"),
        "largest_during_ms": gaps.get("largest_during_ms"),
        "pps_during_loads": gaps.get("pps_during"),
        "swaps": len(loads),
        "load_s_median": median(loads),
        "rejections": len(summary.get("rejections", [])),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'line':30} {'mode':24} {'PPS':>6} {'median gap':>10} {'max outside':>11} "
        f"{'max during':>10} {'ratio':>6} {'PPS in loads':>12} {'swaps':>5} {'load s':>6}"
    )
    print(header)
    for row in rows:
        median, during = row["median_gap_ms"], row["largest_during_ms"]
        ratio = f"{during / median:.2f}" if median and during else "-"
        print(
            f"{row['line']:30} {row['mode']:24} {row['pps']:6.1f} {_ms(median):>10} "
            f"{_ms(row['largest_outside_ms']):>11} {_ms(during):>10} {ratio:>6} "
            f"{_num(row['pps_during_loads']):>12} {row['swaps']:5d} {_num(row['load_s_median']):>6}"
        )
    print(f"goal: max gap during swaps <= {GOAL} x the median gap (ratio column)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The swap benchmark's own flags (--config, --set and --json come from the CLI); every
    --set override goes to every drive, e.g. --set swap.load_share=0.5."""
    parser.add_argument("--lines", nargs="+", default=list(LINES), choices=LINES)
    parser.add_argument(
        "--seconds", type=positive_float, default=40.0, help="per drive (pilotnet_small)"
    )
    parser.add_argument(
        "--seconds-0005", type=positive_float, default=120.0, help="per drive (model_0005, 2-7 PPS)"
    )
    parser.add_argument(
        "--every", type=positive_float, default=5.0, help="seconds between versions"
    )
    parser.add_argument("--nice", type=int, nargs="+", default=[10, 0], help="loader niceness")


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench swap` handler: every drive, then a table or one JSON document."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="charles-swapbench-") as folder:
        work = Path(folder)
        write_config(work, config)
        for line in args.lines:
            seconds = args.seconds_0005 if line.startswith("model_0005") else args.seconds
            # A model_0005 load (220 MB) takes about 15 s within its CPU budget.
            every = args.every if line == "pilotnet_small" else max(args.every, 25.0)
            rows.extend(run_line(line, seconds, every, args.nice, work, set_flags(args.set)))
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows)
    return 0
