"""The trainer's progress: a console line every few seconds and TensorBoard scalars."""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

from agent.config import TrainConfig
from agent.learn.buffers import BufferSet
from agent.learn.cluster import ClusterPart
from agent.learn.shard_watcher import ShardWatcher
from agent.nets.runtime import require_tensorflow

log = logging.getLogger("agent.learn.trainer")

CONSOLE_SECONDS = 5.0
SCALARS_EVERY = 10
"""Batches between TensorBoard points (each write costs about a millisecond)."""


class TrainProgress:
    """Tells a person (console) and TensorBoard how training goes."""

    def __init__(self, logdir: Path, train: TrainConfig, buffers: BufferSet) -> None:
        tf = require_tensorflow()
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir))
        self._train = train
        self._buffers = buffers
        self._times: deque[float] = deque(maxlen=200)
        self._next_line = 0.0
        self._last_wait_line = 0.0
        self._published_at_batch: int | None = None

    def batch_done(self, batch: int, loss: dict[str, float], rate: float) -> None:
        now = time.monotonic()
        self._times.append(now)
        per_second = self.batches_per_second
        if batch % SCALARS_EVERY == 0:
            samples = per_second * self._train.batch_per_buffer * len(self._buffers.fills)
            with self._writer.as_default(step=batch):
                for name, value in loss.items():
                    self._tf.summary.scalar(f"loss/{name}", value)
                self._tf.summary.scalar("learning_rate", rate)
                self._tf.summary.scalar("samples_per_second", samples)
                for name, fill in self._buffers.fills.items():
                    self._tf.summary.scalar(f"buffer_fill/{name}", fill)
        if now >= self._next_line:
            self._next_line = now + CONSOLE_SECONDS
            to_go = self._train.publish_batches - batch % self._train.publish_batches
            eta = to_go / per_second if per_second > 0 else float("inf")
            eta = min(eta, self._train.publish_seconds)
            fills = " ".join(f"{n} {100 * f:.0f}%" for n, f in self._buffers.fills.items())
            log.info(
                "batch %d | loss %s | lr %.2g | %.1f batches/s | buffers %s | "
                "next checkpoint in about %.0f s",
                batch, " ".join(f"{k} {v:.4f}" for k, v in loss.items()), rate, per_second,
                fills, eta,
            )  # fmt: skip

    def waiting(self, watcher: ShardWatcher, samples: int, part: ClusterPart) -> None:
        """One line every few seconds while no batch is trained, saying what it waits for."""
        now = time.monotonic()
        if now - self._last_wait_line < CONSOLE_SECONDS:
            return
        self._last_wait_line = now
        fills = " ".join(f"{n} {100 * f:.0f}%" for n, f in self._buffers.fills.items())
        if self._buffers.ready:
            # Only a cluster member waits with its buffers ready: every member trains a step or
            # none does, and another one's buffers are not ready.
            log.info(
                "waiting for the other members of the training cluster: this member's buffers "
                "are ready (%s); a step is trained only when every member's are", fills,
            )  # fmt: skip
            return
        if self._times:
            # It trained, then a buffer fell under start_fill: its samples were used up, and a
            # trainer run on a finished data set would otherwise wait here for ever, unexplained.
            why = (
                f"training goes on at {100 * self._train.start_fill:.0f}% each; a sample goes "
                f"after {self._train.max_uses} draws (train.max_uses), so it needs new shards"
            )
        else:
            why = f"training starts at {100 * self._train.start_fill:.0f}% each"
        if part.count > 1:
            # With few shards a member can wait here for ever while the others are ready (seen:
            # 4 shards between 2 members); its share of the data is why.
            why += (
                f"; as member {part.index + 1} of {part.count} of a training cluster it loads "
                f"only its part of the shards (1 in {part.count}, by name)"
            )
        log.info(
            "waiting for data: buffers %s (%s); %d samples from %d shards loaded so far",
            fills, why, samples, len(watcher.loaded_names),
        )  # fmt: skip

    @property
    def batches_per_second(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
