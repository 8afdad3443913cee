"""Training on several devices or machines: the tf.distribute strategy, and what the members of a
multi-worker cluster decide together.

Every member of a MultiWorkerMirroredStrategy cluster has to take every collective step
together: a member that trains a batch while another does not waits in that batch's gradient
all-reduce for ever. So whether an iteration trains (every member's buffers ready, no member
stopping: its time or batch limit, a signal) is decided together, once an iteration, with one
small all-reduce (`ClusterDecision`); when one member stops, all stop. A member that dies is
noticed by the others' collectives timing out (`train.cluster_timeout_seconds`) and they end with
one line instead of hanging.

The data is split, not repeated: every member reads the same shared data folder but takes only
the shards whose name hashes to its own part (`ClusterPart`), so each sample is trained on by one
member, `train.max_uses` times, as on one machine. Each member draws `train.batch_per_buffer`
samples from each of its buffers per batch; the gradients of the members' batches are averaged
in the all-reduce, so one step of an N-member cluster learns from N times the samples of one
trainer's step.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

from agent.errors import CharlesError
from agent.nets.runtime import require_tensorflow


def make_strategy(name: str, cluster_timeout: float = 120.0) -> Any:
    """The tf.distribute strategy `train.strategy` names.

    "mirrored" mirrors the model on every GPU of this machine, or on every logical CPU device
    when there is no GPU (tests split the CPU into two); "multiworker" spans the machines
    listed in the TF_CONFIG environment variable; a collective step (a batch's all-reduce, a
    decision) of a multiworker strategy waits at most `cluster_timeout` seconds for the others.
    """
    tf = require_tensorflow()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise CharlesError(
                'train.strategy = "multiworker" needs the TF_CONFIG environment variable '
                "(the cluster's workers and this one's index); see the README"
            )
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cluster_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise CharlesError(f"unknown train.strategy {name!r}")


def is_multi_worker(strategy: Any) -> bool:
    tf = require_tensorflow()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _tf_config() -> dict[str, Any]:
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def is_chief() -> bool:
    """Whether this process publishes: always, except on a non-chief multi-worker member.

    Every member of a MultiWorkerMirroredStrategy cluster runs the same loop on the same
    weights; only the chief (task "chief", or worker 0 when there is none) writes checkpoints.
    """
    config = _tf_config()
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not isinstance(task, dict) or not isinstance(cluster, dict):
        return True
    kind, index = task.get("type", "chief"), task.get("index", 0)
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in cluster


@dataclass(frozen=True)
class ClusterPart:
    """Which shards this member trains on: those whose name's CRC-32 is `index` modulo `count`."""

    index: int = 0
    count: int = 1

    def takes(self, name: str) -> bool:
        return self.count <= 1 or zlib.crc32(name.encode("utf-8")) % self.count == self.index


def cluster_part(strategy: Any) -> ClusterPart:
    """This member's part of the data: the whole for one trainer; for a cluster member, its
    place among the chief and the workers of TF_CONFIG."""
    if not is_multi_worker(strategy):
        return ClusterPart()
    config = _tf_config()
    cluster, task = config.get("cluster", {}), config.get("task", {})
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    index = int(task.get("index", 0))
    place = index if task.get("type") == "chief" else chiefs + index
    return ClusterPart(place, max(1, chiefs + workers))


class ClusterDecision:
    """Whether this iteration trains and whether training stops, the same for every member."""

    def __init__(self, strategy: Any) -> None:
        self._sum: Any = None
        if is_multi_worker(strategy):
            tf = require_tensorflow()

            # In a tf.function: run eagerly, every call logged TensorFlow's warning that a
            # collective strategy is slow outside one.
            @tf.function
            def sum_over_members(votes: Any) -> Any:
                per_replica = strategy.run(tf.identity, args=(votes,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._sum = sum_over_members

    def decide(self, ready: bool, stopping: bool) -> tuple[bool, bool]:
        """(every member is ready, some member is stopping); for one trainer, its own say."""
        if self._sum is None:
            return ready, stopping
        tf = require_tensorflow()
        votes = tf.constant([0.0 if ready else 1.0, 1.0 if stopping else 0.0])
        not_ready, stoppers = (float(value) for value in self._sum(votes).numpy())
        return not_ready == 0, stoppers > 0


class ClusterFailure(CharlesError):
    """Another member of the training cluster died or stopped answering. TensorFlow's
    collective runtime is aborted then, and its clean-up at exit prints tracebacks (a thread
    pool writing to a closed pipe), so the process ends right after the message."""

    end_at_once = True


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` is TensorFlow saying a collective step could not finish: a member died,
    hangs, or cannot be reached."""
    tf = require_tensorflow()
    kinds = (
        tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.AbortedError,
        tf.errors.CancelledError, tf.errors.InternalError,
    )  # fmt: skip
    return isinstance(error, kinds)


def reduce_logs_as_vectors(model: Any) -> None:
    """Let Keras reduce a multi-worker training step's logs.

    Keras 3 reduces them with `strategy.reduce("MEAN", value, axis=0)` under a multi-worker
    strategy (keras/src/backend/tensorflow/trainer.py, `reduce_per_replica`), which fails on
    the scalars `train_step` returns: "Invalid reduction dimension 0 for input with 0
    dimensions", at the first batch. As one-element vectors they reduce to the members' mean.
    """
    tf = require_tensorflow()
    train_step = model.train_step

    def train_step_with_vector_logs(data: Any) -> dict[str, Any]:
        return {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}

    model.train_step = train_step_with_vector_logs
