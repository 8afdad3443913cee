"""`charles bench soak --minutes N`: everything at once, for a long time.

A drive of the bundled game (launched by the drive itself) runs for N minutes with every part a
24/7 stream uses: `charles train` beside it publishing a checkpoint every 30 s (swapped in),
the stream layout recorded with rotation and a disk budget, the live view with two viewers (one
reading /layout.mjpeg, one the overlay's events), an RTMP push to a local ingest
(agent/bench/ingest.py), and one kill -9 of the game half way through.

Every 10 s it samples the drive process (resident memory, threads, open files) and its
predictions (from /status.json). It reports those at the start and the end and their slope per
hour after a warm-up, PPS per minute (min and median), disk used against the budget, and the
drive's own counts: swaps, rejections, game restarts, stream reconnects. A plain drive of the
same line first (`--reference-seconds`, 60 by default) gives the PPS the soak's median is held
against; the samples also note the version driving and the newest in the store, so a version
published and never swapped in (nor rejected) within a minute is counted as a lost swap.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.arguments import positive_float
from agent.bench.rounds import median
from agent.bench.viewers import Viewer, free_tcp_port, status_json
from agent.bench.workfolder import charles_command, write_config
from agent.checkpoints.manifest import version_number
from agent.config import Config
from agent.errors import CharlesError
from agent.runtime.processes import stop_processes

SAMPLE_SECONDS = 10.0
GAME_BACK_LIMIT = 60.0
"""Seconds the soak waits for the drive to predict again after it killed the game."""
SWAP_WITHIN_SECONDS = 60.0
"""A published version not driving (nor rejected) this long after it was seen is a lost swap:
the drive polls the store every swap.poll_seconds and loads beside driving in seconds."""
STREAM_KEY = "soak"
TRAIN_SETTINGS = [
    "train.start_from=reference", "train.buffer_size=400", "train.start_fill=0.5",
    "train.max_uses=1000", "train.learning_rate=0.0001", "train.warmup_batches=50",
    "train.publish_seconds=30", "train.threads=1",
]  # fmt: skip


def process_sample(pid: int) -> dict[str, float]:
    """Resident memory (MB), threads and open files of process `pid` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
    }


def game_processes(drive_pid: int) -> list[int]:
    """The bundled games among the drive's children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == drive_pid and b"agent.game" in command:
            found.append(int(entry.name))
    return found


def slope_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, per hour; None for < 2 samples."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return None
    return 3600 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.mp4") if p.is_file())


def soak(args: argparse.Namespace, config: Config, work: Path) -> dict[str, Any]:
    write_config(work, config)
    seconds = args.minutes * 60
    logs = {name: (work / f"{name}.log").open("w") for name in ("collect", "train", "ingest")}
    children: list[subprocess.Popen[Any]] = []
    reference_pps = reference_drive(args, work) if args.reference_seconds else None
    try:
        subprocess.run(
            charles_command(
                "collect", "--config", "config.toml", "--source", "autopilot", "--render",
                "offscreen", "--seconds", "30", "--set", "collect.steering_noise=0.3",
            ),
            cwd=work, stdout=logs["collect"], stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
        train_flags = [flag for item in TRAIN_SETTINGS for flag in ("--set", item)]
        children.append(subprocess.Popen(
            charles_command("train", "--config", "config.toml", "--seconds",
                            str(seconds + 60), *train_flags),
            cwd=work, stdout=logs["train"], stderr=subprocess.STDOUT,
        ))  # fmt: skip
        ingest_port, live_port = free_tcp_port(), free_tcp_port()
        children.append(subprocess.Popen(
            [sys.executable, "-m", "agent.bench.ingest", str(ingest_port)],
            cwd=work, stdout=logs["ingest"], stderr=subprocess.STDOUT,
        ))  # fmt: skip
        budget_gb = args.keep_gb
        drive_log = (work / "drive.log").open("w")
        drive = subprocess.Popen(
            charles_command(
                "drive", "--config", "config.toml", "--json", "--seconds", str(seconds),
                "--model", args.line, "--live", f"127.0.0.1:{live_port}",
                "--stream", f"rtmp://127.0.0.1:{ingest_port}/live",
                "--set", "record.enabled=true", "--set", "record.mode=layout",
                "--set", f"record.segment_minutes={args.segment_minutes}",
                "--set", f"record.keep_gb={budget_gb}",
                "--set", f"record.folder={json.dumps(str(work / 'recordings'))}",
            ),
            cwd=work, stdout=subprocess.PIPE, stderr=drive_log, text=True,
            env={**os.environ, "CHARLES_STREAM_KEY": STREAM_KEY},
        )  # fmt: skip
        children.append(drive)
        samples, pps_samples, killed_at, back_after = _watch(
            drive, live_port, seconds, args.kill, work / "models", args.line
        )
        out, _ = drive.communicate(timeout=120)
        if drive.returncode != 0:
            raise CharlesError(f"charles drive failed ({drive.returncode}); see {work}/drive.log")
        summary = json.loads(out.strip().splitlines()[-1])
    finally:
        stop_processes(children, 60)
        for log in logs.values():
            log.close()
    report = _report(args, summary, samples, pps_samples, killed_at, work / "recordings")
    report["game_back_after_s"] = back_after
    report["pps_reference_drive"] = reference_pps
    median_pps = report["pps_per_minute_median"]
    report["pps_median_vs_reference"] = (
        round(median_pps / reference_pps - 1, 4) if median_pps and reference_pps else None
    )
    return report


def reference_drive(args: argparse.Namespace, work: Path) -> float:
    """PPS of a plain drive of the same line and game (no trainer, recording, live view or
    stream): what the soak's PPS per minute is held against."""
    done = subprocess.run(
        charles_command("drive", "--config", "config.toml", "--json", "--model", args.line,
                        "--seconds", str(args.reference_seconds)),
        cwd=work, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise CharlesError(f"the reference drive failed ({done.returncode}): {said[-1]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["pps"])


def newest_version(store: Path, line: str) -> int:
    """The number of the newest version of `line` published into `store` (0: none yet)."""
    numbers = [version_number(path.name) for path in (store / line).glob("v*")]
    return max((n for n in numbers if n is not None), default=0)


def swaps_lost(samples: list[dict[str, Any]], within: float = SWAP_WITHIN_SECONDS) -> int:
    """Versions the drive should have swapped in and did not: published (seen in the store at
    one sample) and still newer than the version driving, and not rejected, at every sample
    `within` seconds or more later. A version superseded by a newer one swapped in counts as
    taken; one published in the last `within` seconds is not judged."""
    lost = set()
    for index, sample in enumerate(samples):
        later = [s for s in samples[index:] if s["t"] >= sample["t"] + within]
        if later and all(
            s["driving"] < sample["published"] and sample["published"] not in s["rejected"]
            for s in later
        ):
            lost.add(sample["published"])
    return len(lost)


def _watch(
    drive: subprocess.Popen[str],
    live_port: int,
    seconds: float,
    kill: bool,
    store: Path,
    line: str,
) -> tuple[list[dict[str, Any]], list[tuple[float, int]], float | None, float | None]:
    """Sample the drive until it ends; kill -9 its game half way through and time how long
    until it drives again."""
    started = time.monotonic()
    viewers = [Viewer(live_port, "/layout.mjpeg"), Viewer(live_port, "/events")]
    for viewer in viewers:
        viewer.start()
    samples: list[dict[str, Any]] = []
    predictions: list[tuple[float, int]] = []
    killed_at = back_after = None
    try:
        while drive.poll() is None:
            now = time.monotonic() - started
            if kill and killed_at is None and now >= seconds / 2:
                for pid in game_processes(drive.pid):
                    os.kill(pid, signal.SIGKILL)
                    killed_at = now
                if killed_at is not None:
                    back_after = _driving_again_after(live_port, drive)
            status = status_json(live_port)
            if status is not None:  # driving: samples before (imports, loading) are no start
                predictions.append((now, int(status["predictions"])))
                try:
                    samples.append({
                        "t": now, **process_sample(drive.pid),
                        "driving": version_number(status["version"] or "") or 0,
                        "published": newest_version(store, line),
                        "rejected": [version_number(r["version"]) for r in status["rejections"]],
                    })  # fmt: skip
                except (OSError, KeyError, ValueError):
                    break
            time.sleep(SAMPLE_SECONDS)
    finally:
        for viewer in viewers:
            viewer.stopping.set()
    return samples, predictions, killed_at, back_after


def _driving_again_after(live_port: int, drive: subprocess.Popen[str]) -> float | None:
    """Seconds from now (the game just killed) until the drive, having stopped driving, drives
    and predicts again; None when not within GAME_BACK_LIMIT seconds."""
    started = time.monotonic()
    stopped_at_predictions: int | None = None
    while drive.poll() is None and time.monotonic() - started < GAME_BACK_LIMIT:
        status = status_json(live_port)
        if status is not None:
            if status["state"] != "driving":
                stopped_at_predictions = status["predictions"]
            elif (
                stopped_at_predictions is not None
                and status["predictions"] > stopped_at_predictions
            ):
                return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    return None


def _report(
    args: argparse.Namespace,
    summary: dict[str, Any],
    samples: list[dict[str, Any]],
    predictions: list[tuple[float, int]],
    killed_at: float | None,
    recordings: Path,
) -> dict[str, Any]:
    warm_up = max(120.0, 0.1 * args.minutes * 60)
    settled = [s for s in samples if s["t"] >= warm_up]
    pps_per_minute = []
    for minute in range(int(args.minutes)):
        inside = [(t, n) for t, n in predictions if minute * 60 <= t <= (minute + 1) * 60]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            pps_per_minute.append((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]))
    stream = summary.get("stream") or {}
    report: dict[str, Any] = {
        "minutes": args.minutes,
        "line": args.line,
        "start": samples[0] if samples else None,
        "end": samples[-1] if samples else None,
        "slope_per_hour": {
            key: slope_per_hour([(s["t"], s[key]) for s in settled])
            for key in ("rss_mb", "threads", "open_files")
        },
        "rss_mb_every_5_minutes": [
            round(s["rss_mb"], 1)
            for s in samples
            if int(s["t"] // 300) != int((s["t"] - SAMPLE_SECONDS) // 300)
        ],
        "pps_per_minute_min": round(min(pps_per_minute), 2) if pps_per_minute else None,
        "pps_per_minute_median": median(pps_per_minute),
        "pps_drive": summary.get("pps"),
        "disk_used_gb": round(folder_bytes(recordings) / 1e9, 4),
        "disk_budget_gb": args.keep_gb,
        "swaps": len(summary.get("swaps", [])),
        "swaps_lost": swaps_lost(samples),
        "versions_published": samples[-1]["published"] if samples else None,
        "version_driving_at_end": samples[-1]["driving"] if samples else None,
        "rejections": len(summary.get("rejections", [])),
        "game_killed_at_s": None if killed_at is None else round(killed_at, 1),
        "game_restarts": summary.get("game_restarts", 0),
        "stream_reconnects": stream.get("reconnects"),
        "stream_pictures_sent": stream.get("pictures_sent"),
        "stream_pictures_dropped": stream.get("pictures_dropped"),
        "live": summary.get("live"),
        "recording_files": sum(len(r.get("files", [])) for r in summary.get("recordings", [])),
        "recording_files_kept": len(list(recordings.glob("*.mp4"))),
    }
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=positive_float, default=60.0)
    parser.add_argument("--line", default="pilotnet_small")
    parser.add_argument(
        "--segment-minutes", type=positive_float, default=5.0, help="record.segment_minutes"
    )
    parser.add_argument("--keep-gb", type=positive_float, default=0.5, help="record.keep_gb")
    parser.add_argument(
        "--reference-seconds", type=float, default=60.0,
        help="seconds of a plain drive first, to hold PPS against (0: none)",
    )  # fmt: skip
    parser.add_argument("--no-kill", dest="kill", action="store_false", help="leave the game alone")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench soak` handler."""
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = soak(args, config, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="charles-soak-") as folder:
            report = soak(args, config, Path(folder))
    if args.json:
        print(json.dumps(report))
        return 0
    for key, value in report.items():
        print(f"{key:26} {value}")
    return 0
