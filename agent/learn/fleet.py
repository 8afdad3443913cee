"""`charles collect --workers N`: N collectors in processes of their own, into one data folder.

Each worker is a whole `charles collect` (offscreen: the game simulated in it; window: its own
bundled game on its own gamepad port, `game.channel_port` + its number) with track seeds of
its own (`collect.seed` + its number x SEED_STRIDE), so no two drive the same tracks. Shards
need no coordination: their names hold host, pid and time. The workers report their counts
as JSON lines on their standard output (`WORKER_ENV`); this process prints one progress line
with every worker's samples a second and the total.

Stopping: Ctrl-C or SIGTERM here stops every worker with SIGTERM; each publishes its last
partial shard whole (shards appear atomically) and exits, so only complete shards are left,
and no worker outlives this process (they die with it even after kill -9:
agent.runtime.lifetime). A worker that dies on its own is reported in one line and started
again (with new seeds), at most MAX_RESTARTS times in all.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from agent.errors import CharlesError
from agent.learn.sink import PROGRESS_SECONDS, WORKER_ENV, CollectSummary
from agent.runtime.lifetime import tied_to_this_process
from agent.runtime.processes import stop_processes
from agent.runtime.signals import Stop

log = logging.getLogger("agent.learn.collect")

SEED_STRIDE = 100_000
"""Track seeds between one worker's first and the next's: more tracks than a worker drives in
days (a track takes 35-90 s of simulated time)."""
MAX_RESTARTS = 10
"""Worker restarts in one run before the fleet gives up (something is wrong every time)."""
STOP_SECONDS = 60.0
"""How long stopped workers get to publish their last shard before they are killed."""

WorkerCommand = Callable[[int, int], Sequence[str]]
"""(worker number, its start number: 0, then 1 after its first restart, ...) -> the command."""


def worker_report(summary: CollectSummary) -> str:
    """The JSON line a worker prints at its end: its summary (its counts so far come from
    agent.learn.sink's progress lines)."""
    return json.dumps({"final": True, **summary.__dict__})


@dataclass
class Worker:
    """One collector process and what it last reported."""

    number: int
    command: WorkerCommand
    starts: int = 0
    process: subprocess.Popen[str] | None = None
    latest: dict[str, Any] = field(default_factory=dict)
    finals: list[dict[str, Any]] = field(default_factory=list)
    """The end summary of each of its processes that ended cleanly."""
    base: dict[str, float] = field(default_factory=lambda: {"frames": 0, "kept": 0, "shards": 0})
    """Counts of its earlier processes (a restart starts counting again)."""
    reader: threading.Thread | None = None

    def start(self) -> None:
        env = {**os.environ, WORKER_ENV: str(self.number)}
        # Started from the main thread: the parent-death signal is tied to the starting thread.
        self.process = subprocess.Popen(
            tied_to_this_process(list(self.command(self.number, self.starts))),
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.starts += 1
        self.reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name=f"collect worker {self.number}",
            daemon=True,
        )  # fmt: skip
        self.reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if not isinstance(report, dict):
                continue
            if report.get("final"):
                self.finals.append(report)
            else:
                self.latest = report

    def ended(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def counts(self) -> dict[str, float]:
        latest = self.latest
        return {key: self.base[key] + float(latest.get(key, 0)) for key in self.base}

    def restart(self) -> None:
        if self.reader is not None:
            self.reader.join(5.0)
        self.base = self.counts()
        self.latest = {}
        self.start()


def run_fleet(
    workers: int, command: WorkerCommand, stop: Stop, source: str, render: str
) -> CollectSummary:
    """Run `workers` collectors until `stop` or until they all end; the summed summary."""
    fleet = [Worker(number, command) for number in range(workers)]
    started = time.monotonic()
    restarts = 0
    for worker in fleet:
        worker.start()
    log.info("collecting with %d workers (pids %s)", workers,
             ", ".join(str(w.process.pid) for w in fleet if w.process))  # fmt: skip
    next_line = started + PROGRESS_SECONDS
    rates = _Rates()
    try:
        while not stop.requested:
            running = 0
            for worker in fleet:
                code = worker.ended()
                if code is None:
                    running += 1
                elif code != 0:  # it ended by itself: a crash, kill -9, an error
                    restarts += 1
                    if restarts > MAX_RESTARTS:
                        raise CharlesError(
                            f"collector workers died {restarts} times (the last: worker "
                            f"{worker.number}, exit status {code}); see their messages above"
                        )
                    log.warning(
                        "collector worker %d (pid %d) ended with status %d; starting it again",
                        worker.number, worker.process.pid if worker.process else 0, code,
                    )  # fmt: skip
                    worker.restart()
                    running += 1
            if running == 0:
                break
            now = time.monotonic()
            if now >= next_line:
                next_line = now + PROGRESS_SECONDS
                log.info("%s", rates.line(fleet, now))
            stop.event.wait(0.2)
    finally:
        _stop_all(fleet)
    return _summed(fleet, source, render, time.monotonic() - started, stop.reason or "end")


class _Rates:
    """Samples a second of each worker over the last progress interval."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, float]] = {}

    def line(self, fleet: list[Worker], now: float) -> str:
        parts, total, kept = [], 0.0, 0.0
        for worker in fleet:
            counts = worker.counts()
            then, before = self._last.get(worker.number, (now - PROGRESS_SECONDS, 0.0))
            rate = (counts["frames"] - before) / max(now - then, 1e-9)
            self._last[worker.number] = (now, counts["frames"])
            total += rate
            kept += counts["kept"]
            parts.append(f"w{worker.number} {rate:.0f}/s")
        frames = sum(worker.counts()["frames"] for worker in fleet)
        return (f"{len(fleet)} workers: {' '.join(parts)}; total {total:.0f} samples/s, "
                f"{frames:.0f} frames, {kept:.0f} kept")  # fmt: skip


def _stop_all(fleet: list[Worker]) -> None:
    killed = stop_processes([worker.process for worker in fleet], STOP_SECONDS)
    for worker in fleet:
        if worker.process in killed:
            log.warning("collector worker %d did not stop; it was killed", worker.number)
        if worker.reader is not None:
            worker.reader.join(5.0)


def _summed(
    fleet: list[Worker], source: str, render: str, seconds: float, stopped_by: str
) -> CollectSummary:
    finals = [final for worker in fleet for final in worker.finals]
    return CollectSummary(
        source=source,
        render=render,
        frames=int(sum(f.get("frames", 0) for f in finals)),
        kept=int(sum(f.get("kept", 0) for f in finals)),
        shards=int(sum(f.get("shards", 0) for f in finals)),
        seconds=seconds,
        tracks=sorted(seed for f in finals for seed in f.get("tracks", [])),
        stopped_by=stopped_by,
    )
