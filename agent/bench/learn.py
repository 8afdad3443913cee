"""`charles bench learn`: collect, train, then drive unseen tracks through window capture.

Every phase is a real `charles` command in its own process, in a fresh work folder, and does a
fixed amount of work (frames collected, batches trained), so the checkpoints are the same
recipe on any machine and only the minutes differ:
1. behaviour cloning: `charles collect --source autopilot --render offscreen` on tracks from
   seed 1000 up, then `charles train`;
2. dagger: `charles collect --source dagger` (the BC checkpoint drives half the time, the
   autopilot labels every frame) on tracks from seed 2000 up, then `charles train` again, which
   resumes from the BC checkpoint;
3. evaluation on tracks 1-5 (never collected on): `charles game --seed S --wait-for-input`,
   driven by `charles drive` (window capture, the game's gamepad) with the untrained model, the
   BC checkpoint and the dagger checkpoint, and by the game's own autopilot for reference.
   A run ends when the lap is done or after `--cap` seconds of driving; its score is
   CarRacing's (+1000/N per new tile of N, -0.1 per 50 Hz step), as the game logs it.

Prints one table (or, with --json, the report as one JSON document) and writes results.json
and score-vs-training.png into the work folder. Progress goes to stderr. The work folder reads
the config the benchmark was given (its file, else the built-in defaults); each --set override
goes to every command, before the recipe's own settings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.arguments import positive_float, positive_int
from agent.bench.workfolder import charles_command, set_flags, write_config
from agent.config import Config
from agent.errors import CharlesError
from agent.game.channel import ask_identity, free_udp_port
from agent.runtime.display import display_for_this_process
from agent.runtime.lifetime import tied_to_this_process
from agent.runtime.processes import stop_processes

EVAL_SEEDS = (1, 2, 3, 4, 5)
POLICIES = ("autopilot", "untrained", "bc", "dagger")
BC_SEED = 1000
DAGGER_SEED = 2000
# The recipe's settings (also what the reference checkpoint's manifest records).
COLLECT_SETTINGS = ["collect.steering_noise=0.3", "data.samples_per_shard=250"]
TRAIN_SETTINGS = [
    "train.max_uses=30",
    "train.warmup_batches=300",
    "train.publish_seconds=60",
    "train.publish_batches=1000",
    "train.save_buffers_seconds=120",
    "train.nice=0",
    "train.keep_versions=1000",  # the BC checkpoint must survive until it is evaluated
]
_EPISODE_LINE = re.compile(r"episode 1 over \((?P<how>[^)]*)\): score (?P<score>-?[\d.]+)")


@dataclass
class Run:
    policy: str
    seed: int
    score: float
    distance: float
    finished: bool
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The learning benchmark's own flags (--config, --set and --json come from the CLI)."""
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder (default: a new bench-learn/<time>/)")  # fmt: skip
    # The reference checkpoint's batches (its manifest: 3,355 + 919), rounded. Time limits would
    # make the recipe depend on the machine's speed: on a machine half as fast, 4 minutes of
    # autopilot did not fill the buffers enough to start training. The frames: a buffer draws
    # only while it holds train.start_fill (3,600 of 4,000) and a sample is drawn at most
    # max_uses (30) times, so N throttle samples last about (N - 3,600) x 30 / 32 batches; the
    # frames the agent drives in dagger teach steering only, so the autopilot's frames must last
    # nearly all 4,300. 24,000 frames gave ~6,800 throttle samples and training stalled at
    # batch ~3,080; 36,000 give ~10,000.
    parser.add_argument("--collect-frames", type=positive_int, default=36_000)
    parser.add_argument("--train-batches", type=positive_int, default=3_400)
    parser.add_argument("--dagger-collect-frames", type=positive_int, default=8_000)
    parser.add_argument("--dagger-train-batches", type=positive_int, default=900)
    parser.add_argument(
        "--phase-minutes", type=positive_float, default=30.0,
        help="longest any collect or train phase may run (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--cap", type=positive_float, default=60.0, help="seconds of driving per run"
    )
    parser.add_argument("--seeds", default=",".join(map(str, EVAL_SEEDS)))
    parser.add_argument(
        "--buffer", type=positive_int, default=4000, help="train.buffer_size (default: %(default)s)"
    )
    parser.add_argument("--skip-eval", action="store_true", help="only collect and train")
    parser.add_argument(
        "--policies", type=policy_names, default=POLICIES,
        help=f"the policies evaluated, with commas (default: {','.join(POLICIES)})",
    )  # fmt: skip
    from agent.bench.learn_live import add_arguments as add_live_arguments

    add_live_arguments(parser)


def policy_names(text: str) -> tuple[str, ...]:
    """--policies: names from POLICIES with commas, kept in POLICIES' order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(POLICIES))
    if unknown or not names:
        what = f"{', '.join(unknown)} is not a policy" if unknown else "no policy given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(POLICIES)}")
    return tuple(policy for policy in POLICIES if policy in names)


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench learn` handler."""
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise CharlesError(
            f"--seeds takes whole numbers with commas (1,2,3), not {args.seeds}"
        ) from None
    work = args.work or Path("bench-learn") / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    write_config(work, config)
    # One display for every game and drive of the evaluation (each would start its own).
    with display_for_this_process():
        if args.learn_live:
            from agent.bench.learn_live import run_live

            return run_live(args, work, seeds)
        return _run(args, work, seeds)


def _run(args: argparse.Namespace, work: Path, seeds: list[int]) -> int:
    bench = Bench(work, set_flags(args.set))
    train_settings = [*TRAIN_SETTINGS, f"train.buffer_size={args.buffer}"]
    # A phase that cannot finish its amount (buffers that never fill) ends here, not never.
    cap = ("--seconds", str(60 * args.phase_minutes))
    phases = {}
    phases["collect_bc"] = bench.charles(
        "collect", "--source", "autopilot", "--render", "offscreen",
        "--frames", str(args.collect_frames), *cap, *sets([*COLLECT_SETTINGS,
        f"collect.seed={BC_SEED}"]),
    )  # fmt: skip
    phases["train_bc"] = bench.charles(
        "train", "--batches", str(args.train_batches), *cap, *sets(train_settings)
    )
    bc = bench.newest_version()
    phases["collect_dagger"] = bench.charles(
        "collect", "--source", "dagger", "--render", "offscreen",
        "--frames", str(args.dagger_collect_frames), *cap, *sets([*COLLECT_SETTINGS,
        f"collect.seed={DAGGER_SEED}", "collect.autopilot_share=0.5"]),
    )  # fmt: skip
    phases["train_dagger"] = bench.charles(
        "train", "--batches", str(args.dagger_train_batches), *cap, *sets(train_settings)
    )
    dagger = bench.newest_version()
    batches = {"bc": bench.batches(bc), "dagger": bench.batches(dagger)}
    asked = {"bc": args.train_batches, "dagger": args.train_batches + args.dagger_train_batches}
    for name, count in batches.items():
        if count < asked[name]:
            progress(
                f"[bench] the {name} checkpoint has {count} of {asked[name]} batches: its trainer "
                f"ran out of samples it may draw (train.max_uses) or time (--phase-minutes)"
            )
    runs: list[Run] = []
    checkpoints = {"autopilot": "", "untrained": "none", "bc": str(bc), "dagger": str(dagger)}
    if not args.skip_eval:
        for seed in seeds:
            for policy in args.policies:
                runs.append(bench.evaluate(policy, seed, args.cap, checkpoints[policy]))
    minutes = {name: seconds / 60 for name, seconds in phases.items()}
    report = {
        "work": str(work),
        "minutes": minutes,
        "frames": {"bc": args.collect_frames, "dagger": args.dagger_collect_frames},
        "batches": batches,
        "checkpoints": {"bc": str(bc), "dagger": str(dagger)},
        "cap_seconds": args.cap,
        "cpu_cores": os.cpu_count(),
        "settings": {"collect": COLLECT_SETTINGS, "train": train_settings},
        "runs": [asdict(run) for run in runs],
    }
    (work / "results.json").write_text(json.dumps(report, indent=2))
    if runs:
        plot(work / "score-vs-training.png", report, runs)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report, runs, seeds)
    return 0


def sets(settings: list[str]) -> list[str]:
    return [item for setting in settings for item in ("--set", setting)]


def progress(text: str) -> None:
    """A progress line: on stderr, so stdout is the result alone."""
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, work: Path, settings: list[str]) -> None:
        self.work = work
        self.settings = settings
        """--set flags of the user's for every command, before the recipe's own."""

    def command(self, *args: str) -> list[str]:
        """`charles COMMAND` with the user's overrides, then the rest of `args`."""
        return charles_command(args[0], *self.settings, *args[1:])

    def charles(self, *args: str) -> float:
        """Run one charles command in the work folder; returns its wall seconds."""
        started = time.monotonic()
        log = self.work / f"{args[0]}-{int(time.time())}.log"
        progress(f"[bench] charles {' '.join(args)}  (log: {log.name})")
        with log.open("w") as out:
            # Tied: a benchmark killed mid-phase leaves no collector or trainer running on.
            command = tied_to_this_process(self.command(*args))
            status = subprocess.call(command, cwd=self.work, stdout=out, stderr=out)
        if status not in (0, 130, 143):
            raise CharlesError(f"charles {args[0]} failed with status {status}; see {log}")
        seconds = time.monotonic() - started
        tail = log.read_text().strip().splitlines()[-6:]
        progress("\n".join(f"    {line}" for line in tail))
        return seconds

    def newest_version(self) -> Path:
        root = self.work / "models" / "pilotnet_small"
        versions = (
            sorted(p for p in root.iterdir() if p.name.startswith("v")) if root.is_dir() else []
        )
        if not versions:
            raise CharlesError(
                f"charles train published no version into {root}; see the newest train-*.log "
                f"in {self.work} (its buffers may never have reached train.start_fill)"
            )
        return versions[-1]

    def batches(self, folder: Path) -> int:
        return int(json.loads((folder / "manifest.json").read_text())["batches"])

    def evaluate(self, policy: str, seed: int, cap: float, checkpoint: str = "") -> Run:
        port = free_udp_port()
        game_log = self.work / f"eval-{policy}-{seed}-game.log"
        telemetry = self.work / f"eval-{policy}-{seed}.jsonl"
        game_cmd = self.command(
            "game", "--seed", str(seed), "--port", str(port),
            "--telemetry", str(telemetry), "--wait-for-input",
        )  # fmt: skip
        if policy == "autopilot":
            game_cmd.append("--autopilot")
        game = subprocess.Popen(
            tied_to_this_process(game_cmd), cwd=self.work, stdout=game_log.open("w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        drive = None
        try:
            # The drive must find this game on its port, not start one of its own.
            deadline = time.monotonic() + 60
            while ask_identity(port) is None:
                if time.monotonic() > deadline or game.poll() is not None:
                    raise CharlesError(f"the game for {policy} seed {seed} did not start; see "
                                       f"{game_log}")  # fmt: skip
                time.sleep(0.2)
            if policy != "autopilot":
                drive_log = self.work / f"eval-{policy}-{seed}-drive.log"
                drive_cmd = self.command(
                    "drive", "--checkpoint", checkpoint, "--seconds", str(cap + 60),
                    "--set", f"game.channel_port={port}",
                )  # fmt: skip
                drive = subprocess.Popen(
                    tied_to_this_process(drive_cmd),
                    cwd=self.work,
                    stdout=drive_log.open("w"),
                    stderr=subprocess.STDOUT,
                )
            run = self._watch(policy, seed, cap, game_log, telemetry)
        finally:
            for process in (drive, game):  # the drive lets go before its game goes
                stop_processes([process], 15, signal.SIGINT)
        progress(
            f"[bench] {policy:9s} seed {seed}: score {run.score:7.1f}, "
            f"{run.distance:6.0f} m, {_ending(run, cap)} after {run.seconds:.1f} s"
        )
        return run

    def _watch(self, policy: str, seed: int, cap: float, game_log: Path, telemetry: Path) -> Run:
        """Wait for the lap's end or `cap` seconds of driving; score from the game's own log."""
        started_driving = None
        deadline = time.monotonic() + cap + 120  # start-up allowance
        while time.monotonic() < deadline:
            time.sleep(0.2)
            text = game_log.read_text() if game_log.exists() else ""
            match = _EPISODE_LINE.search(text)
            records = _records(telemetry)
            if started_driving is None and "the race starts" in text:
                started_driving = time.monotonic()
            if match:
                last = [r for r in records if r["episode"] == 1]
                distance = last[-1]["distance"] if last else 0.0
                # Lap time from the first input on (the game holds the car until then).
                moving = [r["t"] for r in last if r["source"] != "none"]
                lap = last[-1]["t"] - moving[0] if moving else 0.0
                return Run(
                    policy, seed, float(match["score"]), distance,
                    "lap finished" in match["how"], lap,
                )  # fmt: skip
            if started_driving is not None and time.monotonic() - started_driving >= cap:
                last = records[-1] if records else {"score": 0.0, "distance": 0.0}
                return Run(policy, seed, last["score"], last["distance"], False, cap)
        return Run(policy, seed, float("nan"), 0.0, False, 0.0)


def _ending(run: Run, cap: float) -> str:
    if run.finished:
        return "lap done"
    return "cap" if run.seconds >= cap else "episode over before the lap (see its game log)"


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def print_table(report: dict, runs: list[Run], seeds: list[int]) -> None:
    minutes = report["minutes"]
    collect = minutes["collect_bc"] + minutes["collect_dagger"]
    train = minutes["train_bc"] + minutes["train_dagger"]
    print()
    print(f"work folder: {report['work']} ({report['cpu_cores']} CPU cores)")
    frames = report["frames"]
    print(
        f"collection: {frames['bc']} frames autopilot in {minutes['collect_bc']:.1f} min + "
        f"{frames['dagger']} frames dagger in {minutes['collect_dagger']:.1f} min = "
        f"{collect:.1f} min; "
        f"training: {minutes['train_bc']:.1f} + {minutes['train_dagger']:.1f} = {train:.1f} min "
        f"(wall time of each command, start-up included); total {collect + train:.1f} min"
    )
    print(
        f"batches: bc {report['batches']['bc']}, dagger {report['batches']['dagger']} "
        f"(samples drawn up to 30 times: train.max_uses=30)"
    )
    if not runs:
        return
    header = "policy     " + "".join(f"  seed {s:<13d}" for s in seeds) + "  mean score  mean m"
    print(header)
    print("           " + "".join("  score    metres " for _ in seeds))
    for policy in POLICIES:
        mine = [r for r in runs if r.policy == policy]
        if not mine:
            continue
        cells = "".join(f"  {r.score:7.1f} {r.distance:7.0f}  " for r in mine)
        mean = float(np.mean([r.score for r in mine]))
        metres = float(np.mean([r.distance for r in mine]))
        print(f"{policy:11s}{cells}  {mean:9.1f}  {metres:6.0f}")


def plot(path: Path, report: dict, runs: list[Run]) -> None:
    """Mean score against training minutes: untrained (0), BC, dagger; the autopilot as a line."""
    minutes = report["minutes"]
    points = [
        (0.0, "untrained"),
        (minutes["train_bc"], "bc"),
        (minutes["train_bc"] + minutes["train_dagger"], "dagger"),
    ]
    if {run.policy for run in runs} != set(POLICIES):
        progress("plot: skipped (it needs every policy evaluated)")
        return
    means = {p: float(np.nanmean([r.score for r in runs if r.policy == p])) for _, p in points}
    autopilot = float(np.nanmean([r.score for r in runs if r.policy == "autopilot"]))
    if not all(np.isfinite([*means.values(), autopilot])):
        progress("plot: skipped (a policy has no finished evaluation)")
        return
    width, height, margin = 800, 500, 70
    image = np.full((height, width, 3), 255, np.uint8)
    low, high = min(-400.0, *means.values()), 1000.0
    span_x = max(points[-1][0], 1.0)

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = margin + int((width - 2 * margin) * x / span_x)
        py = height - margin - int((height - 2 * margin) * (y - low) / (high - low))
        return px, py

    cv2.line(image, to_px(0, low), to_px(span_x, low), (0, 0, 0), 1)
    cv2.line(image, to_px(0, low), to_px(0, high), (0, 0, 0), 1)
    for level in (-400, 0, 400, 800, 900):
        if low <= level <= high:
            cv2.putText(image, str(level), (5, to_px(0, level)[1] + 5), 0, 0.45, (0, 0, 0), 1)
            cv2.line(image, to_px(0, level), to_px(span_x, level), (225, 225, 225), 1)
    cv2.line(image, to_px(0, autopilot), to_px(span_x, autopilot), (0, 160, 0), 1)
    cv2.putText(image, f"autopilot {autopilot:.0f}", to_px(0.02 * span_x, autopilot + 15), 0, 0.5,
                (0, 130, 0), 1)  # fmt: skip
    previous = None
    for x, policy in points:
        point = to_px(x, means[policy])
        cv2.circle(image, point, 5, (200, 60, 0), -1)
        cv2.putText(image, f"{policy} {means[policy]:.0f}", (point[0] + 8, point[1] - 8), 0, 0.5,
                    (200, 60, 0), 1)  # fmt: skip
        if previous is not None:
            cv2.line(image, previous, point, (200, 60, 0), 2)
        previous = point
    cv2.putText(image, "mean score on unseen tracks vs training minutes (2 CPU cores)",
                (margin, 30), 0, 0.6, (0, 0, 0), 1)  # fmt: skip
    cv2.putText(image, f"training minutes (0 - {span_x:.1f})", (width // 2 - 80, height - 20), 0,
                0.5, (0, 0, 0), 1)  # fmt: skip
    cv2.imwrite(str(path), image)
    progress(f"plot: {path}")
