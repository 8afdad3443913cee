"""What the trainer says while it trains no batch: the line must name what it waits for. A
cluster member waits either for data (its own buffers, filled from its part of the shards) or
for the other members; both look alike in the fill numbers, so the words must differ."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from agent.config import TrainConfig
from agent.learn.buffers import OUTPUT_NAMES, BufferSet
from agent.learn.cluster import ClusterPart
from agent.learn.progress import TrainProgress
from agent.learn.shard_watcher import ShardWatcher

SHAPE = (4, 6, 3)


def waiting_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, samples: int, part: ClusterPart
) -> str:
    """The one line a trainer logs while waiting, with buffers of 10 holding `samples` each."""
    train = TrainConfig(buffer_size=10, start_fill=0.9)
    buffers = BufferSet(train.buffer_size, SHAPE, start_fill=train.start_fill)
    if samples:
        sets = np.ones((samples, len(OUTPUT_NAMES)), dtype=bool)
        labels = np.zeros((samples, len(OUTPUT_NAMES)), dtype=np.float32)
        buffers.add_shard(np.zeros((samples, *SHAPE), np.uint8), labels, sets)
    progress = TrainProgress(tmp_path / "tensorboard", train, buffers)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.learn.trainer"):
        progress.waiting(ShardWatcher(tmp_path, SHAPE), samples, part)
    progress.close()
    [line] = [record.getMessage() for record in caplog.records]
    return line


def test_a_cluster_member_with_ready_buffers_says_it_waits_for_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    line = waiting_line(tmp_path, caplog, samples=10, part=ClusterPart(0, 2))
    assert line.startswith("waiting for the other members of the training cluster")
    assert "throttle 100% steering 100%" in line


def test_a_cluster_member_short_of_data_says_it_takes_only_its_part_of_the_shards(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: with 4 shards between 2 members one never filled its buffers, and the cluster
    never trained, every member only saying 'waiting for data'."""
    line = waiting_line(tmp_path, caplog, samples=5, part=ClusterPart(1, 2))
    assert line.startswith("waiting for data: buffers throttle 50% steering 50%")
    assert "member 2 of 2 of a training cluster" in line and "1 in 2" in line


def test_one_trainer_waiting_for_data_says_nothing_of_a_cluster(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    line = waiting_line(tmp_path, caplog, samples=5, part=ClusterPart())
    assert line.startswith("waiting for data") and "cluster" not in line
    assert "training starts at 90% each" in line
