"""Training on several workers: two real `charles train` processes as one
MultiWorkerMirroredStrategy cluster on 127.0.0.1, on one shared data folder; and what one batch
means under a mirrored strategy on two logical CPU devices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.checkpoints.resolve import versions
from agent.learn.cluster import ClusterPart
from tests.helpers.charles import REPO
from tests.test_trainer import write_shards

SETTINGS = {
    "train.strategy": '"multiworker"', "train.buffer_size": "40", "train.batch_per_buffer": "4",
    "train.max_uses": "100", "train.warmup_batches": "3", "train.publish_batches": "5",
    "train.publish_seconds": "3600", "train.nice": "0", "train.save_buffers_seconds": "3600",
    "train.start_fill": "0.5", "train.cluster_timeout_seconds": "15",
}  # fmt: skip


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def start_member(tmp_path: Path, ports: list[int], index: int, *flags: str) -> subprocess.Popen:
    tf_config = {
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }
    settings = [f for key, value in SETTINGS.items() for f in ("--set", f"{key}={value}")]
    settings += ["--set", f'train.state="{tmp_path / f"training-{index}"}"']
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "train", "--data", str(tmp_path / "data"),
         "--store", str(tmp_path / "models"), *settings, *flags],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip


def wait_for_a_version(tmp_path: Path, chief: subprocess.Popen) -> None:
    """Until the chief published its first version: the cluster is training."""
    deadline = time.monotonic() + 240
    while not versions(tmp_path / "models", "pilotnet_small"):
        assert chief.poll() is None, chief.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the cluster never published"
        time.sleep(0.5)


def finish(member: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = member.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        member.kill()
        out, err = member.communicate()
        pytest.fail(f"a cluster member did not end within {timeout} s: {err[-3000:]}")
    return member.returncode, out, err


def test_two_trainers_as_one_cluster_train_and_only_the_chief_publishes(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 400, per_shard=20)
    ports = free_ports(2)
    members = [start_member(tmp_path, ports, index, "--batches", "12") for index in (0, 1)]
    results = [finish(member, 300) for member in members]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    chief_out, worker_out = results[0][1], results[1][1]
    assert "trained 12 batches" in chief_out and "trained 12 batches" in worker_out
    assert "published: nothing" in worker_out and "published: v0001" in chief_out
    published = versions(tmp_path / "models", "pilotnet_small")
    assert [v.manifest.batches for v in published] == [5, 10, 12]
    # The data is split, not repeated: each member loaded only the shards of its own part.
    loaded = [int(out.split("samples loaded: ")[1].split(",")[0]) for _, out, _ in results]
    assert all(0 < count < 400 for count in loaded), loaded


def test_a_member_killed_mid_run_ends_the_other_in_one_line(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 400, per_shard=20)
    ports = free_ports(2)
    members = [start_member(tmp_path, ports, index, "--seconds", "600") for index in (0, 1)]
    try:
        wait_for_a_version(tmp_path, members[0])
        members[1].send_signal(signal.SIGKILL)
        started = time.monotonic()
        code, _, err = finish(members[0], 120)
        ended_after = time.monotonic() - started
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
    assert code != 0
    where = err.find("Traceback")
    assert where < 0, err[max(0, where - 300) : where + 4000]
    lines = [line for line in err.splitlines() if line.startswith("charles: error:")]
    assert len(lines) == 1 and "another member of the training cluster" in lines[0], err[-3000:]
    assert ended_after < 60, ended_after


def test_a_cluster_splits_the_shards_between_its_members() -> None:
    names = [f"shard-host-{pid}-{1_700_000_000_000 + pid}-000001.npz" for pid in range(300)]
    parts = [ClusterPart(index, 3) for index in range(3)]
    taken = [[name for name in names if part.takes(name)] for part in parts]
    assert sorted(name for mine in taken for name in mine) == sorted(names)  # each once
    assert all(60 < len(mine) < 140 for mine in taken), [len(mine) for mine in taken]
    assert all(ClusterPart().takes(name) for name in names)


_ONE_BATCH = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from agent.learn.cluster import make_strategy

class Probe(keras.Model):
    # Counts the rows each replica's step sees.
    def train_step(self, data):
        x, y = data[0], data[1]
        rows = tf.cast(tf.shape(x)[0], tf.float32)
        self.seen.assign_add(rows)
        return {"rows": rows}

strategy = make_strategy("mirrored")
with strategy.scope():
    inputs = keras.Input((3,))
    model = Probe(inputs, keras.layers.Dense(1)(inputs))
    model.seen = tf.Variable(0.0, aggregation=tf.VariableAggregation.SUM,
                             synchronization=tf.VariableSynchronization.ON_READ)
    model.compile(optimizer="sgd", loss="mse")
logs = model.train_on_batch(np.zeros((8, 3)), np.zeros((8, 1)), return_dict=True)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "rows_per_replica": logs["rows"],
                  "rows_in_all": float(model.seen.numpy())}))
"""


def test_a_mirrored_batch_is_given_whole_to_every_replica() -> None:
    """What `train_on_batch` does with one batch under a MirroredStrategy (Keras 3, TF 2.21):
    every replica gets the whole batch; it is repeated, not split."""
    result = subprocess.run(
        [sys.executable, "-c", "import json\n" + _ONE_BATCH], cwd=REPO, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["replicas"] == 2
    assert seen["rows_per_replica"] == 8
    assert seen["rows_in_all"] == 16


def test_a_member_told_to_stop_stops_the_whole_cluster_cleanly(tmp_path: Path) -> None:
    """Stopping is decided together: SIGTERM to one member ends both between batches (the
    chief publishing what was trained), instead of leaving the other alone in a batch's
    all-reduce until the cluster timeout ends it with an error."""
    write_shards(tmp_path / "data", 400, per_shard=20)
    ports = free_ports(2)
    members = [start_member(tmp_path, ports, index, "--seconds", "600") for index in (0, 1)]
    try:
        wait_for_a_version(tmp_path, members[0])
        members[1].send_signal(signal.SIGTERM)
        worker_code, worker_out, worker_err = finish(members[1], 60)
        chief_code, chief_out, chief_err = finish(members[0], 60)
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
    assert worker_code == 143, worker_err[-3000:]
    assert "stopped by: SIGTERM" in worker_out
    assert chief_code == 0, chief_err[-3000:]
    assert "stopped by: another member of the training cluster stopped" in chief_out
    assert "charles: error" not in chief_err + worker_err
    trained = int(chief_out.split("model at batch ")[1].split()[0])
    assert versions(tmp_path / "models", "pilotnet_small")[-1].manifest.batches == trained
