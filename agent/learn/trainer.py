"""`charles train`: the background trainer.

It watches the data folder, loads every new shard into one buffer per output, and while every
buffer is at least `train.start_fill` full it trains on batches that draw the same number of
samples from each buffer (`agent.learn.buffers`). Every `train.publish_batches` batches or
`train.publish_seconds` seconds it publishes a checkpoint into the model store, where a driving
agent picks it up. It keeps in `train.state`: the optimizer's state, the names of the shards
already loaded, a rotating copy of the buffers and TensorBoard event files.

Crash safety: everything it writes appears atomically (store versions, shards, state files), so
after `kill -9` a restart resumes from the last published checkpoint and its batch count, with
the optimizer state saved at that publish (when it matches) and the buffers' last copy.

One trainer per model line and store: `run_train` holds the store's publishing lock for the
line (an OS file lock, released by the kernel even after kill -9) and, under it, removes what a
killed publish left behind. A second trainer is refused in one line before it starts. The
members of one multi-worker cluster are one trainer: only the chief publishes, so only the
chief takes the lock; the other workers never write to the store. A store it cannot publish
into (a file, read-only, full) is refused at start, not at the first publish; a publish that
fails (a disk filled meanwhile) stops training in one line with every published version
intact, and nothing is pruned after it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.checkpoints.load import load_into
from agent.checkpoints.publish import (
    line_folder,
    prune,
    publish,
    require_room,
    weights_bytes_estimate,
)
from agent.checkpoints.publishing_lock import PublishingLock
from agent.checkpoints.reference import reference_checkpoint
from agent.checkpoints.resolve import latest
from agent.config import Config, TrainConfig
from agent.errors import CharlesError, ModelError, one_line
from agent.learn.buffers import BufferSet
from agent.learn.cluster import (
    ClusterDecision,
    ClusterFailure,
    cluster_part,
    is_chief,
    is_collective_failure,
    is_multi_worker,
    make_strategy,
    reduce_logs_as_vectors,
)
from agent.learn.progress import TrainProgress
from agent.learn.schedule import WarmupSchedule
from agent.learn.shard_format import ShardError
from agent.learn.shard_watcher import ShardWatcher
from agent.learn.state import TrainerState
from agent.nets.registry import OUTPUT_NAMES, ModelLine, get_line
from agent.nets.runtime import require_tensorflow
from agent.runtime.signals import Stop, on_stop_signals

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often the data folder is listed for new shards (and how long an idle trainer sleeps)."""


@dataclass
class TrainSummary:
    """What one `charles train` run did."""

    batches: int
    """Batch count of the model at the end (including batches before a resume)."""
    batches_this_run: int
    published: list[str] = field(default_factory=list)
    samples_loaded: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    stopped_by: str = ""
    resumed_from: str = ""

    def lines(self) -> list[str]:
        rate = self.batches_this_run / self.seconds if self.seconds > 0 else 0.0
        return [
            f"trained {self.batches_this_run} batches in {self.seconds:.0f} s ({rate:.1f}/s); "
            f"model at batch {self.batches}",
            f"resumed from: {self.resumed_from or 'fresh weights'}",
            f"published: {', '.join(self.published) or 'nothing'}",
            f"samples loaded: {self.samples_loaded}, shards skipped: {self.shards_skipped}",
            f"stopped by: {self.stopped_by}",
        ]


def limit_cpu(train: TrainConfig) -> None:
    """Give way to `charles drive` on the same machine: niceness and TensorFlow's thread pools.

    Must run before TensorFlow executes anything (its thread pools are fixed at first use).
    """
    if train.nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(train.nice)
    if train.threads > 0:
        tf = require_tensorflow()
        tf.config.threading.set_intra_op_parallelism_threads(train.threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, train.threads // 2))


def check_data_folder(folder: Path) -> None:
    """A one-line error unless `folder` is a folder the trainer can list."""
    if not folder.exists():
        raise CharlesError(
            f"data folder {folder} does not exist; run charles collect first, or set "
            "data.folder to the folder collectors write to"
        )
    if not folder.is_dir():
        raise CharlesError(f"data folder {folder} is not a folder; set data.folder")
    try:
        next(os.scandir(folder), None)
    except OSError as error:
        raise CharlesError(f"cannot read data folder {folder}: {error.strerror}") from None


class Trainer:
    """One model line trained from one data folder into one store."""

    def __init__(self, config: Config, strategy: Any, stop: Stop) -> None:
        self.config = config
        self.train = config.train
        self.line: ModelLine = get_line(config.model.line)
        self.store = Path(config.model.store)
        self.data = Path(config.data.folder)
        self.stop = stop
        self.strategy = strategy
        self.chief = is_chief()
        check_data_folder(self.data)
        # Before any work: a store this trainer cannot publish into is refused now, not at
        # the first publish, up to train.publish_seconds of training later.
        root = line_folder(self.store, self.line.name) if self.chief else None
        self.state = TrainerState(Path(self.train.state), self.line.name)
        self.schedule = WarmupSchedule(self.train.learning_rate, self.train.warmup_batches)
        self.model, self.batches, self.resumed_from = self._build_model()
        if root is not None:
            estimate = weights_bytes_estimate(self.model.count_params())
            require_room(root, estimate, self.line.name)
        self.buffers = BufferSet(
            self.train.buffer_size,
            self.line.input_shape,
            max_uses=self.train.max_uses,
            start_fill=self.train.start_fill,
            rng=np.random.default_rng(self.train.seed + self.batches),
        )
        # The list of shards already loaded belongs to the buffers' copy: without a copy,
        # every shard is read again.
        already_loaded: set[str] = set()
        if self.state.load_buffers(self.buffers):
            log.info("buffers refilled from their last copy: %s", _fills(self.buffers))
            already_loaded = self.state.loaded_shards()
        # A cluster member takes its own part of the shards (agent/learn/cluster.py).
        self.part = cluster_part(strategy)
        self.decision = ClusterDecision(strategy)
        self.watcher = ShardWatcher(
            self.data, self.line.input_shape, already_loaded=already_loaded, takes=self.part.takes
        )
        self.samples_loaded = 0

    def _build_model(self) -> tuple[Any, int, str]:
        import keras

        tf = require_tensorflow()
        # Whether a version's arrays fit is checked against the network built below, not one
        # built to learn its shapes: a second build in this process would rename Keras's
        # automatically named layers, and the saved optimizer state is matched by those names.
        # So this first look skips the fit, and the second picks the newest version that fits.
        checkpoint = latest(self.store, self.line.name, check_fit=False)
        from_store = checkpoint is not None
        if checkpoint is None and self.train.start_from == "reference":
            checkpoint = reference_checkpoint(self.line.name)
            if checkpoint is None:
                log.info("no reference checkpoint ships for %s; starting fresh", self.line.name)
        with self.strategy.scope():
            keras.utils.set_random_seed(self.train.seed)
            model = self.line.build("none" if checkpoint else self.config.model.pretrained)
            if from_store:  # the newest version whose arrays fit it (cached checks: cheap)
                checkpoint = latest(self.store, self.line.name, fits=model)
            batches, resumed = 0, ""
            if checkpoint is not None:
                load_into(model, checkpoint, self.line.name)
                batches, resumed = checkpoint.manifest.batches, checkpoint.name
            clip = {"global_clipnorm": self.train.clip_norm} if self.train.clip_norm > 0 else {}
            optimizer = keras.optimizers.Adam(learning_rate=self.schedule, **clip)
            model.compile(
                optimizer=optimizer, loss={name: "mse" for name in OUTPUT_NAMES}, jit_compile=False
            )
            optimizer.build(model.trainable_variables)
            if is_multi_worker(self.strategy):
                reduce_logs_as_vectors(model)
            # The warm-up and Adam's bias correction follow the optimizer's own step count:
            # restored with its state, the ramp goes on where it was; a fresh Adam (empty
            # moment estimates) counts from 0 again, so it warms up again instead of taking
            # full-size steps from empty estimates.
            if self.state.load_optimizer(optimizer, batches):
                optimizer.iterations.assign(tf.constant(batches, dtype=optimizer.iterations.dtype))
            elif batches:
                log.info(
                    "no optimizer state saved at batch %d; Adam starts afresh and warms up again",
                    batches,
                )
        return model, batches, resumed

    def run(self, seconds: float | None = None, max_batches: int | None = None) -> TrainSummary:
        started = time.monotonic()
        first_batch = self.batches
        summary = TrainSummary(self.batches, 0, resumed_from=self.resumed_from)
        progress = TrainProgress(self.state.tensorboard, self.train, self.buffers)
        last_publish = time.monotonic()
        last_buffer_copy = time.monotonic()
        next_poll = 0.0
        losses: list[dict[str, float]] = []
        publishing = False
        log.info(
            "training %s from %s; data %s; buffers of %d (start at %.0f%%), %d uses a sample",
            self.line.name, self.resumed_from or "fresh weights", self.data,
            self.train.buffer_size, 100 * self.train.start_fill, self.train.max_uses,
        )  # fmt: skip
        try:
            while True:
                now = time.monotonic()
                limit = None
                if seconds is not None and now - started >= seconds:
                    limit = "time limit"
                elif max_batches is not None and self.batches - first_batch >= max_batches:
                    limit = "batch limit"
                if now >= next_poll:
                    self._load_new_shards()
                    next_poll = now + POLL_SECONDS
                # The same answer on every member of a cluster, so all train this batch or none.
                ready, stopping = self.decision.decide(
                    self.buffers.ready, limit is not None or self.stop.requested
                )
                if stopping:
                    if not self.stop.requested:
                        self.stop(limit or "another member of the training cluster stopped")
                    break
                if not ready:
                    progress.waiting(self.watcher, self.samples_loaded, self.part)
                    self.stop.event.wait(POLL_SECONDS)
                    next_poll = 0.0
                    continue
                losses.append(self._train_one_batch())
                progress.batch_done(self.batches, losses[-1], self._rate())
                due = self.batches % self.train.publish_batches == 0 or (
                    now - last_publish >= self.train.publish_seconds
                )
                if due:
                    publishing = True
                    summary.published.append(self._publish(losses))
                    publishing = False
                    losses, last_publish = [], time.monotonic()
                if time.monotonic() - last_buffer_copy >= self.train.save_buffers_seconds:
                    self.state.save_buffers(self.buffers)
                    last_buffer_copy = time.monotonic()
            if losses:  # a clean stop keeps the batches trained since the last publish
                publishing = True
                summary.published.append(self._publish(losses))
                publishing = False
            summary.published = [version for version in summary.published if version]
            self.state.save_buffers(self.buffers)
        except Exception:
            # Whatever ended training, batches trained since the last publish are kept when
            # the weights are sound (a diverged model is refused by publish itself), unless
            # it was publishing that failed: trying again at once fails again.
            if losses and not publishing:
                try:
                    summary.published.append(self._publish(losses))
                except Exception as error:  # the first error is the one to report
                    log.warning("could not keep the last %d batches: %s", len(losses), error)
            raise
        finally:
            progress.close()
        summary.batches = self.batches
        summary.batches_this_run = self.batches - first_batch
        summary.samples_loaded = self.samples_loaded
        summary.shards_skipped = self.watcher.skipped
        summary.seconds = time.monotonic() - started
        summary.stopped_by = self.stop.reason or "end"
        return summary

    def _load_new_shards(self) -> None:
        # One shard at a time: until every buffer is ready, and then only while no buffer is
        # full, so shards that arrive faster than training uses samples wait on disk instead
        # of pushing unused samples out.
        while (
            not self.buffers.ready or max(self.buffers.fills.values()) < 1.0
        ) and not self.stop.requested:
            try:
                shards = self.watcher.poll(limit=1)
            except ShardError as error:
                # A shared folder can blink (network storage); training goes on meanwhile.
                log.warning("cannot read new shards now (%s); trying again", error)
                return
            if not shards:
                return
            shard = shards[0]
            self.buffers.add_shard(shard.frames, shard.labels, shard.sets)
            self.samples_loaded += len(shard)
            self.state.remember_shards([shard.path.name])

    def _train_one_batch(self) -> dict[str, float]:
        per_buffer = self.train.batch_per_buffer
        frames, labels = self.buffers.draw_batch(per_buffer)
        # Lists in the model's output order (OUTPUT_NAMES): Keras matches weights by position.
        targets = [labels[:, index : index + 1] for index in range(len(OUTPUT_NAMES))]
        result = self.model.train_on_batch(
            frames, targets, sample_weight=self._head_weights(per_buffer), return_dict=True
        )
        self.batches += 1
        loss = {name: float(result[f"{name}_loss"]) for name in OUTPUT_NAMES}
        loss["total"] = float(result["loss"])
        if not all(math.isfinite(value) for value in loss.values()):
            raise ModelError(
                f"training diverged at batch {self.batches} (loss {loss}); lower "
                "train.learning_rate or raise train.warmup_batches, and check the data"
            )
        return loss

    def _rate(self) -> float:
        return self.schedule.rate_at(int(self.model.optimizer.iterations.numpy()) - 1)

    def _head_weights(self, per_buffer: int) -> list[np.ndarray]:
        """Each head learns from its own output's balanced set only.

        The batch is `per_buffer` samples from each buffer in OUTPUT_NAMES order. A set is
        balanced for its output, not the other (the throttle set is mostly straight ahead), and
        a sample may carry a label only one output can trust (dagger), so the rows drawn from
        one output's buffer weigh 1 for that head and 0 for the others. The weights are scaled
        so each head's loss is a mean over its own rows.
        """
        count = len(OUTPUT_NAMES)
        weights = []
        for index in range(count):
            weight = np.zeros(per_buffer * count, dtype=np.float32)
            weight[index * per_buffer : (index + 1) * per_buffer] = count
            weights.append(weight)
        return weights

    def _publish(self, losses: list[dict[str, float]]) -> str:
        mean = {name: float(np.mean([loss[name] for loss in losses])) for name in losses[0]}
        if not self.chief:
            return ""
        note = json.dumps({"trainer": "charles train", "data": str(self.data)})
        checkpoint = publish(self.model, self.store, self.line.name, self.batches, note, mean)
        # Saved after the checkpoint: a crash in between leaves the older state, which the
        # restart sees does not match the checkpoint's batch count and leaves unused.
        self.state.save_optimizer(self.model.optimizer, self.batches)
        # Only now: publish returned, so the new version is on disk (fsynced). A publish that
        # failed raised above, and the versions it would have replaced stay.
        removed = prune(self.store, self.line.name, self.train.keep_versions)
        log.info(
            "published %s (loss %s)%s", checkpoint.name,
            " ".join(f"{k} {v:.4f}" for k, v in mean.items()),
            f"; pruned {', '.join(removed)}" if removed else "",
        )  # fmt: skip
        return checkpoint.manifest.version


def _fills(buffers: BufferSet) -> str:
    return ", ".join(f"{name} {100 * fill:.0f}%" for name, fill in buffers.fills.items())


def run_train(
    config: Config, seconds: float | None = None, max_batches: int | None = None
) -> TrainSummary:
    """Train until a stop signal, `seconds` or `max_batches`; returns the summary."""
    stop = Stop()
    try:
        with contextlib.ExitStack() as held:
            with on_stop_signals(stop.on_signal), stop.interrupting():
                if is_chief():  # first: a second trainer is refused before any slow start
                    held.enter_context(claim_store(Path(config.model.store), config.model.line))
                limit_cpu(config.train)
                strategy = make_strategy(
                    config.train.strategy, config.train.cluster_timeout_seconds
                )
                trainer = Trainer(config, strategy, stop)
            with on_stop_signals(stop):
                return trainer.run(seconds, max_batches)
    except OSError as error:  # disk full, no permission: the user's to fix, in one line
        where = f" ({error.filename})" if error.filename else ""
        raise CharlesError(f"training stopped: {error.strerror or error}{where}") from None
    except Exception as error:
        if config.train.strategy == "multiworker" and is_collective_failure(error):
            raise ClusterFailure(
                "training stopped: another member of the training cluster stopped answering "
                f"({one_line(str(error).strip().splitlines()[0] if str(error).strip() else error)}"
                "); start every member again, they resume from the last checkpoint"
            ) from None
        raise


def claim_store(store: Path, line: str) -> PublishingLock:
    """The lock that makes this process the one trainer publishing `line` into `store`, with
    what killed publishers left behind removed under it; a one-line error when another holds
    it."""
    lock = PublishingLock(store, line)
    try:
        removed = lock.remove_leftovers()
    except BaseException:
        lock.release()
        raise
    if removed:
        log.info(
            "model store: removed %d leftover(s) of interrupted publishing: %s",
            len(removed), ", ".join(removed),
        )  # fmt: skip
    return lock
