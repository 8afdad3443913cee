"""Where every collector's samples go: Balancing v3, then shard files, with a progress line.

A sample is offered with all its outputs; the balancer decides per output whether it joins
that output's balanced set, and a sample that joins neither is dropped (it would only add more
"straight ahead" frames). Kept samples are written into shards, which appear in the data folder
atomically, `data.samples_per_shard` at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.config import Config
from agent.learn.balance import Balancer, write_histogram_png
from agent.learn.shard_format import ShardError
from agent.learn.shard_writer import ShardWriter, cannot_write
from agent.nets.registry import OUTPUT_NAMES

log = logging.getLogger("agent.learn.collect")

PROGRESS_SECONDS = 5.0
WORKER_ENV = "CHARLES_COLLECT_WORKER"
"""Set to a worker's number in the environment of each collector `charles collect --workers`
starts (agent/learn/fleet.py): it then reports its counts as JSON lines on stdout."""


@dataclass
class CollectSummary:
    """What one `charles collect` run produced."""

    source: str
    render: str
    frames: int
    kept: int
    shards: int
    seconds: float
    tracks: list[int]
    stopped_by: str
    histogram: str = ""
    pairing: str = ""

    def lines(self) -> list[str]:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"collected {self.frames} frames in {self.seconds:.0f} s ({rate:.0f}/s) from "
            f"{self.source} ({self.render}); kept {self.kept} in {self.shards} shards",
        ]
        if self.tracks:
            lines.append(f"track seeds: {_seed_ranges(self.tracks)}")
        if self.pairing:
            lines.append(f"frame/command pairing: {self.pairing}")
        if self.histogram:
            lines.append(f"histogram: {self.histogram}")
        lines.append(f"stopped by: {self.stopped_by}")
        return lines


class SampleSink:
    """Balances offered samples and writes the kept ones into shards."""

    def __init__(self, config: Config, source: str, input_shape: tuple[int, int, int]) -> None:
        self.folder = Path(config.data.folder)
        self.balancer = Balancer(config.collect.balance_ratio)
        self.writer = ShardWriter(
            self.folder, source, input_shape, samples_per_shard=config.data.samples_per_shard
        )
        self.histogram_path = (
            self.folder / f"histogram-{_safe(socket.gethostname())}-{os.getpid()}.png"
            if config.collect.histogram
            else None
        )
        self.frames = 0
        self.kept = 0
        self.unlabelled = 0
        self._started = time.monotonic()
        self._next_line = self._started + PROGRESS_SECONDS

    def offer(
        self,
        frame: np.ndarray,
        throttle: float,
        steering: float,
        speed: float,
        outputs: tuple[str, ...] = OUTPUT_NAMES,
    ) -> None:
        """One labelled frame; throttle = accelerate - brake, both labels in [-1, 1].

        `outputs`: the outputs whose labels are trustworthy for this frame; the sample may
        join only their balanced sets.
        """
        self.frames += 1
        if not (math.isfinite(throttle) and math.isfinite(steering)):
            self.unlabelled += 1  # never clamp NaN into a full-lock label
            return
        throttle = min(1.0, max(-1.0, throttle))
        steering = min(1.0, max(-1.0, steering))
        sets = self.balancer.offer(throttle, steering, outputs)
        if any(sets):
            self.kept += 1
            self.writer.add(frame, throttle, steering, speed, time.time(), sets)
        now = time.monotonic()
        if now >= self._next_line:
            self._next_line = now + PROGRESS_SECONDS
            self.progress_line(now)

    def progress_line(self, now: float) -> None:
        rate = self.frames / max(now - self._started, 1e-9)
        if os.environ.get(WORKER_ENV) is not None:
            # A worker of `charles collect --workers`: its fleet prints one line for all.
            counts = {"frames": self.frames, "kept": self.kept,
                      "shards": self.writer.shards_written}  # fmt: skip
            print(json.dumps(counts), flush=True)
            return
        log.info(
            "%d frames (%.0f/s), %d kept, %d shards | %s",
            self.frames, rate, self.kept, self.writer.shards_written, self._bins_line(),
        )  # fmt: skip

    def _bins_line(self) -> str:
        parts = []
        for name in OUTPUT_NAMES:
            kept = self.balancer.kept(name)
            parts.append(f"{name} kept per bin {' '.join(str(int(n)) for n in kept)}")
        return " | ".join(parts)

    def close(self) -> str:
        """Publish the last partial shard and the histogram; returns the histogram's path.

        ShardError (one line) when the data folder cannot take them (a full disk); a shard
        that could not be written leaves nothing behind, not even half of one.
        """
        self.writer.close()
        if self.histogram_path is None or self.frames == 0:
            return ""
        try:
            write_histogram_png(self.histogram_path, self.balancer)
        except OSError as error:
            raise ShardError(cannot_write(self.folder, "the histogram", error)) from None
        return str(self.histogram_path)

    def close_after_error(self) -> None:
        """`close` while another error ends the collection: what cannot be written is
        logged in one line instead of hiding that error."""
        try:
            self.close()
        except ShardError as error:
            log.warning("the last samples or the histogram were not written: %s", error)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "host"


def _seed_ranges(seeds: list[int]) -> str:
    if not seeds:
        return ""
    ranges, start, previous = [], seeds[0], seeds[0]
    for seed in [*seeds[1:], math.inf]:
        if seed != previous + 1:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
            start = seed
        previous = seed
    return ", ".join(ranges)
