"""`charles bench learn --live`: from random weights, collection, training and evaluation at
the same time, the score plotted against wall-clock minutes.

Every part is a real `charles` command in its own process, in a fresh work folder:
- `charles train` from random weights (`train.start_from=pretrained` with no pretrained
  weights), publishing a version every `--publish-seconds` into the work folder's store;
- one collector at a time: `charles collect --source autopilot --render offscreen` (tracks from
  seed 1000) for `--autopilot-minutes`, then, once a version exists, `charles collect --source
  dagger` (tracks from seed 2000): the newest version drives half the time and the autopilot
  labels every frame; it takes each newer version at its next track
  (agent/learn/offscreen.py `follow_newest`);
- an evaluator: whenever a version newer than the last one it scored exists, it drives the
  unseen tracks `--seeds` one after another through window capture (`charles game` + `charles
  drive --checkpoint VERSION`, as `charles bench learn` does), each lap or `--cap` seconds.

The collector and the trainer run at niceness 10, so the evaluator's real-time drive keeps
its pace: a score must measure the weights, not a starved drive. After `--minutes` the trainer
and the collector stop (the trainer publishes what it has), and the last version is scored
too if the evaluator had not reached it.

A version's minute is when it was published (its manifest's `created`), counted from the
start: the evaluator may score it minutes later. "Minutes to 800" is the publishing minute of
the first version whose mean over the seeds reached 800.

Prints a table (or, with --json, the report) and writes live-results.json and
score-vs-minutes.png into the work folder; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from agent.arguments import positive_float
from agent.bench.learn import COLLECT_SETTINGS, TRAIN_SETTINGS, Bench, Run, progress, sets
from agent.bench.workfolder import set_flags
from agent.checkpoints.manifest import read_manifest, version_number
from agent.errors import CharlesError
from agent.runtime.processes import stop_processes

AUTOPILOT_SEED = 1000
DAGGER_SEED = 2000
THRESHOLDS = (700, 800, 900)
"""Mean scores whose first minute the report gives (900: CarRacing's "solved")."""
LEARNER_NICENESS = 10
LEARNER_SETTINGS = [
    "train.start_from=pretrained",  # model.pretrained "none": random weights
    "train.start_fill=0.5",  # a first version sooner: 4 minutes of autopilot fill 69% of throttle
    "train.nice=10",
]


@dataclass
class Evaluation:
    """One version scored on every seed."""

    version: str
    batches: int
    published_minute: float
    started_minute: float
    ended_minute: float
    mean_score: float
    runs: list[Run] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--live and its own flags, beside `charles bench learn`'s."""
    parser.add_argument(
        "--live", action="store_true", dest="learn_live",  # "live" is the drive's live view
        help="learn from random weights with collection, training and evaluation at once",
    )  # fmt: skip
    parser.add_argument(
        "--minutes", type=positive_float, default=15.0,
        help="--live: minutes of learning (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--autopilot-minutes", type=positive_float, default=4.0,
        help="--live: minutes the autopilot collects before dagger takes over",
    )  # fmt: skip
    parser.add_argument(
        "--publish-seconds", type=positive_float, default=60.0,
        help="--live: train.publish_seconds (default: %(default)s)",
    )  # fmt: skip


def run_live(args: argparse.Namespace, work: Path, seeds: list[int]) -> int:
    """The `charles bench learn --live` handler, inside the evaluation's display."""
    bench = Bench(work, set_flags(args.set))
    store = work / "models" / "pilotnet_small"
    train_settings = [
        *TRAIN_SETTINGS, f"train.buffer_size={args.buffer}",
        f"train.publish_seconds={args.publish_seconds}", *LEARNER_SETTINGS,
    ]  # fmt: skip
    started = time.time()  # wall clock: each version's minute comes from its manifest's `created`
    deadline = time.monotonic() + 60 * args.minutes
    learners = Learners(bench, started)
    evaluations: list[Evaluation] = []
    # Learning stops on time even while the evaluator is busy scoring a version.
    timer = threading.Timer(60 * args.minutes, learners.stop)
    timer.daemon = True
    timer.start()
    try:
        learners.start(
            "train", "train", "--seconds", str(60 * args.minutes + 600), *sets(train_settings)
        )
        collector = threading.Thread(
            target=learners.collect_in_turn,
            args=(args.autopilot_minutes, deadline, store),
            name="collectors",
            daemon=True,
        )
        collector.start()
        while not learners.stopping:
            learners.check()
            newest = _newest(store)
            if newest is None or (evaluations and evaluations[-1].version == newest.name):
                time.sleep(2.0)
                continue
            evaluations.append(_evaluate(bench, newest, seeds, args.cap, started))
    finally:
        timer.cancel()
        learners.stop()
    newest = _newest(store)
    if newest is not None and (not evaluations or evaluations[-1].version != newest.name):
        progress(f"[bench] learning stopped; scoring the last version {newest.name}")
        evaluations.append(_evaluate(bench, newest, seeds, args.cap, started))
    report = {
        "work": str(work),
        "minutes": args.minutes,
        "autopilot_minutes": args.autopilot_minutes,
        "cap_seconds": args.cap,
        "seeds": seeds,
        "cpu_cores": os.cpu_count(),
        "settings": {"collect": COLLECT_SETTINGS, "train": train_settings},
        "minutes_to": minutes_to(evaluations),
        "collectors": learners.phases,
        "evaluations": [asdict(e) for e in evaluations],
    }
    (work / "live-results.json").write_text(json.dumps(report, indent=2))
    if evaluations:
        plot_live(work / "score-vs-minutes.png", evaluations, args.minutes)
    if args.json:
        print(json.dumps(report))
    else:
        print_live_table(report, evaluations)
    return 0


def minutes_to(evaluations: list[Evaluation]) -> dict[str, float | None]:
    """For each threshold, the publishing minute of the first version whose mean reached it."""
    reached: dict[str, float | None] = {}
    for threshold in THRESHOLDS:
        first = [e.published_minute for e in evaluations if e.mean_score >= threshold]
        reached[str(threshold)] = round(min(first), 2) if first else None
    return reached


class Learners:
    """The trainer and the collector in turn, as child processes at niceness 10."""

    def __init__(self, bench: Bench, started: float) -> None:
        self.bench = bench
        self.started = started
        self.phases: list[dict[str, object]] = []
        """Each collector run: its source and its minutes from the start."""
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """`charles ARGS` as the learner `name` (its log: `name`.log in the work folder)."""
        log = self.bench.work / f"{name}.log"
        with self._lock:
            if self._stopping.is_set():
                raise _Stopped
            progress(f"[bench] charles {' '.join(args)}  (log: {log.name})")
            process = subprocess.Popen(
                self.bench.command(*args), cwd=self.bench.work, stdout=log.open("a"),
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            # The child has no children yet; the trainer lowers its own priority too.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, process.pid, LEARNER_NICENESS)
            self._processes[name] = process
        return process

    def collect_in_turn(self, autopilot_minutes: float, deadline: float, store: Path) -> None:
        """Autopilot first; dagger, driven by the newest version, once one exists."""
        try:
            seed = AUTOPILOT_SEED
            self._collect("collect-autopilot", "autopilot", 60 * autopilot_minutes,
                          [f"collect.seed={seed}"])  # fmt: skip
            # Until the trainer published (its buffers filled), dagger has nothing to drive
            # with and would take the shipped checkpoint: the autopilot goes on a minute at a
            # time, on new tracks.
            while _newest(store) is None:
                seed += 100
                self._collect("collect-autopilot", "autopilot", 60.0, [f"collect.seed={seed}"])
            left = deadline - time.monotonic()
            if left > 0:
                self._collect("collect-dagger", "dagger", left, [
                    f"collect.seed={DAGGER_SEED}", "collect.autopilot_share=0.5",
                ])  # fmt: skip
        except _Stopped:
            return

    def _collect(self, name: str, source: str, seconds: float, settings: list[str]) -> None:
        begun = self.minute()
        process = self.start(
            name, "collect", "--source", source, "--render", "offscreen",
            "--seconds", str(round(seconds, 1)), *sets([*COLLECT_SETTINGS, *settings]),
        )  # fmt: skip
        process.wait()
        self.phases.append({"source": source, "from_minute": begun, "to_minute": self.minute(),
                            "status": process.returncode})  # fmt: skip

    def minute(self) -> float:
        return round((time.time() - self.started) / 60, 2)

    def check(self) -> None:
        """A learner that failed ends the benchmark with one line naming its log."""
        with self._lock:
            for name, process in self._processes.items():
                if process.poll() not in (None, 0, 130, 143):
                    raise CharlesError(
                        f"charles {name} failed with status {process.returncode}; see "
                        f"{self.bench.work / (name + '.log')}"
                    )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """SIGINT to every learner (the trainer publishes what it has), then wait for them.
        Safe to call again, from any thread: a learner gets one SIGINT."""
        with self._lock:
            first = not self._stopping.is_set()
            self._stopping.set()
            running = [p for p in self._processes.values() if p.poll() is None]
        stop_processes(running, 60, signal.SIGINT if first else None)


class _Stopped(Exception):
    """The benchmark is stopping: no new learner starts."""


def _newest(store: Path) -> Path | None:
    """The newest published version folder (the evaluator's drive checks it when loading)."""
    if not store.is_dir():
        return None
    numbered = [p for p in store.iterdir() if version_number(p.name) is not None]
    return max(numbered, key=lambda p: version_number(p.name) or 0, default=None)


def _evaluate(
    bench: Bench, version: Path, seeds: list[int], cap: float, started: float
) -> Evaluation:
    manifest = read_manifest(version)
    created = datetime.datetime.fromisoformat(manifest.created).timestamp()
    begun = (time.time() - started) / 60
    runs = [bench.evaluate(version.name, seed, cap, checkpoint=str(version)) for seed in seeds]
    evaluation = Evaluation(
        version=version.name,
        batches=manifest.batches,
        published_minute=round((created - started) / 60, 2),
        started_minute=round(begun, 2),
        ended_minute=round((time.time() - started) / 60, 2),
        mean_score=round(float(np.mean([run.score for run in runs])), 1),
        runs=runs,
    )
    progress(
        f"[bench] {version.name} ({manifest.batches} batches, published at minute "
        f"{evaluation.published_minute:.1f}): mean score {evaluation.mean_score:.1f}"
    )
    return evaluation


def print_live_table(report: dict, evaluations: list[Evaluation]) -> None:
    print()
    print(f"work folder: {report['work']} ({report['cpu_cores']} CPU cores); learning "
          f"{report['minutes']:.0f} min from random weights")  # fmt: skip
    seeds = report["seeds"]
    print("version  published  batches  scored (min)   mean   " +
          "".join(f"seed {s:<6d}" for s in seeds))  # fmt: skip
    for e in evaluations:
        cells = "".join(f"{run.score:9.1f}  " for run in e.runs)
        scored = f"{e.started_minute:5.1f}-{e.ended_minute:5.1f}"
        print(f"{e.version:7s}  {e.published_minute:6.1f}    {e.batches:7d}  {scored}  "
              f"{e.mean_score:6.1f}  {cells}")  # fmt: skip
    for threshold, minute in report["minutes_to"].items():
        reached = f"minute {minute:.1f}" if minute is not None else "not reached"
        print(f"mean {threshold}: {reached}")


def plot_live(path: Path, evaluations: list[Evaluation], minutes: float) -> None:
    """Mean score against the minute each version was published; thresholds as grey lines."""
    width, height, margin = 800, 500, 70
    image = np.full((height, width, 3), 255, np.uint8)
    scores = [e.mean_score for e in evaluations if np.isfinite(e.mean_score)]
    low, high = min(-200.0, *scores), 1000.0
    span_x = max(minutes, *(e.published_minute for e in evaluations), 1.0)

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = margin + int((width - 2 * margin) * x / span_x)
        py = height - margin - int((height - 2 * margin) * (y - low) / (high - low))
        return px, py

    black, grey, blue = (0, 0, 0), (215, 215, 215), (200, 60, 0)
    cv2.line(image, to_px(0, low), to_px(span_x, low), black, 1)
    cv2.line(image, to_px(0, low), to_px(0, high), black, 1)
    for level in (0, 400, *THRESHOLDS):
        cv2.line(image, to_px(0, level), to_px(span_x, level), grey, 1)
        cv2.putText(image, str(level), (8, to_px(0, level)[1] + 5), 0, 0.45, black, 1)
    for minute in range(0, int(span_x) + 1, 5):
        x, y = to_px(minute, low)
        cv2.putText(image, str(minute), (x - 5, y + 20), 0, 0.45, black, 1)
    previous = None
    for e in evaluations:
        if not np.isfinite(e.mean_score):
            continue
        point = to_px(e.published_minute, e.mean_score)
        cv2.circle(image, point, 5, blue, -1)
        cv2.putText(image, f"{e.mean_score:.0f}", (point[0] - 12, point[1] - 10), 0, 0.45,
                    blue, 1)  # fmt: skip
        if previous is not None:
            cv2.line(image, previous, point, blue, 2)
        previous = point
    cv2.putText(image, "learning live from random weights: mean score on unseen tracks",
                (margin, 30), 0, 0.6, black, 1)  # fmt: skip
    cv2.putText(image, "minutes since the start (version published)", (width // 2 - 170,
                height - 20), 0, 0.5, black, 1)  # fmt: skip
    cv2.imwrite(str(path), image)
    progress(f"plot: {path}")
