"""`charles train`: warm-up, per-head sets, publishing, resume after kill -9, distribute, errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.checkpoints.load import verify_weights
from agent.checkpoints.publish import publish
from agent.checkpoints.resolve import latest, versions
from agent.config import Config, DataConfig, ModelConfig, TrainConfig
from agent.errors import CharlesError
from agent.learn.schedule import WarmupSchedule
from agent.learn.shard_writer import ShardWriter
from agent.learn.trainer import Trainer
from agent.nets.registry import get_line
from agent.runtime.signals import Stop
from tests.helpers.charles import REPO, assert_one_line_error

SHAPE = (90, 160, 3)


def write_shards(
    folder: Path,
    count: int,
    *,
    throttle: float = 0.5,
    steering: float = -0.25,
    sets: tuple[bool, bool] = (True, True),
    per_shard: int = 50,
    seed: int = 0,
) -> None:
    rng = np.random.default_rng(seed)
    writer = ShardWriter(folder, "test", SHAPE, samples_per_shard=per_shard)
    for _ in range(count):
        frame = rng.integers(0, 256, SHAPE, dtype=np.uint8)
        writer.add(frame, throttle, steering, float("nan"), time.time(), sets)
    writer.close()


def small_config(tmp_path: Path, **train: object) -> Config:
    settings = {
        "buffer_size": 40,
        "batch_per_buffer": 4,
        "max_uses": 100,
        "warmup_batches": 3,
        "publish_batches": 5,
        "publish_seconds": 3600.0,
        "nice": 0,
        "save_buffers_seconds": 3600.0,
        **train,
    }
    return Config(
        model=ModelConfig(store=str(tmp_path / "models")),
        data=DataConfig(folder=str(tmp_path / "data")),
        train=TrainConfig(state=str(tmp_path / "training"), **settings),  # type: ignore[arg-type]
    )


# --- warm-up ---------------------------------------------------------------------------------


def test_warmup_rises_linearly_then_stays() -> None:
    schedule = WarmupSchedule(1e-3, 10)
    assert schedule.rate_at(0) == pytest.approx(1e-4)
    assert schedule.rate_at(4) == pytest.approx(5e-4)
    assert schedule.rate_at(9) == pytest.approx(1e-3)
    assert schedule.rate_at(5000) == pytest.approx(1e-3)
    for step in (0, 4, 9, 5000):  # the graph version Keras calls agrees with the plain one
        assert float(schedule(step)) == pytest.approx(schedule.rate_at(step))
    assert float(WarmupSchedule(2e-3, 0)(0)) == pytest.approx(2e-3)
    with pytest.raises(ValueError):
        WarmupSchedule(0.0, 10)


def test_the_optimizer_follows_the_warmup_from_the_resumed_batch(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    config = small_config(tmp_path, warmup_batches=20, learning_rate=1e-2)
    trainer = Trainer(config, _default_strategy(), Stop())
    optimizer = trainer.model.optimizer
    assert float(optimizer.learning_rate) == pytest.approx(1e-2 / 20)
    trainer.run(max_batches=4)
    assert int(optimizer.iterations.numpy()) == 4
    assert float(optimizer.learning_rate) == pytest.approx(1e-2 * 5 / 20)
    # A new trainer resumes at the published batch count, mid-ramp, not back at the start.
    resumed = Trainer(config, _default_strategy(), Stop())
    assert resumed.batches == 4
    assert float(resumed.model.optimizer.learning_rate) == pytest.approx(1e-2 * 5 / 20)


def test_start_from_reference_fine_tunes_the_shipped_checkpoint(tmp_path: Path) -> None:
    from agent.checkpoints.reference import reference_checkpoint

    write_shards(tmp_path / "data", 100)
    shipped = reference_checkpoint("pilotnet_small")
    assert shipped is not None
    frame = np.full(get_line("pilotnet_small").input_shape, 90, dtype=np.uint8)[np.newaxis]
    fresh = Trainer(small_config(tmp_path), _default_strategy(), Stop())
    assert fresh.batches == 0
    tuned = Trainer(small_config(tmp_path, start_from="reference"), _default_strategy(), Stop())
    assert tuned.batches == shipped.manifest.batches
    reference = get_line("pilotnet_small").build("none")
    from agent.checkpoints.load import load_into

    load_into(reference, shipped, "pilotnet_small")
    expected = [float(np.asarray(o)[0, 0]) for o in reference(frame, training=False)]
    got = [float(np.asarray(o)[0, 0]) for o in tuned.model(frame, training=False)]
    assert got == pytest.approx(expected, abs=1e-6)
    tuned.run(max_batches=2)  # and its first publish counts on from the reference's batches
    assert latest(tmp_path / "models", "pilotnet_small").manifest.batches == (
        shipped.manifest.batches + 2
    )


def _default_strategy():
    import tensorflow as tf

    return tf.distribute.get_strategy()


# --- training --------------------------------------------------------------------------------


def test_each_head_learns_only_from_its_own_balanced_set(tmp_path: Path) -> None:
    """Throttle-set samples say throttle 0.6; steering-set samples carry a throttle of -0.8
    that must not be learnt (and the mirror for steering)."""
    data = tmp_path / "data"
    write_shards(data, 60, throttle=0.6, steering=-0.8, sets=(True, False), seed=1)
    write_shards(data, 60, throttle=-0.8, steering=0.4, sets=(False, True), seed=2)
    config = small_config(tmp_path, learning_rate=3e-3, warmup_batches=0, buffer_size=50)
    trainer = Trainer(config, _default_strategy(), Stop())
    trainer.run(max_batches=150)
    frames = np.random.default_rng(3).integers(0, 256, (16, *SHAPE), dtype=np.uint8)
    throttle, steering = (np.asarray(o).mean() for o in trainer.model(frames, training=False))
    assert throttle == pytest.approx(0.6, abs=0.15)
    assert steering == pytest.approx(0.4, abs=0.15)


class StopOnWaitAfterTraining(logging.Handler):
    """Stops a trainer at its first 'waiting for data' line after a batch line."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(logging.INFO)
        self._stop = stop
        self._trained = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self._trained = self._trained or message.startswith("batch ")
        if self._trained and "waiting for data" in message:
            self._stop("waiting")


def test_a_trainer_whose_samples_are_used_up_says_why_it_waits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """50 samples, buffers of 40 that train from 36 on, each sample drawn at most twice: after a
    few batches the buffers fall under 36 and no shard comes. The wait must say why, not only
    'waiting for data' (a user's `charles train --batches N` on a finished data set)."""
    write_shards(tmp_path / "data", 50)
    config = small_config(tmp_path, max_uses=2, publish_batches=1000)
    stop = Stop()
    # Until it waits (a slow machine takes seconds for its first batch), not a fixed time.
    waiting = StopOnWaitAfterTraining(stop)
    logging.getLogger("agent.learn.trainer").addHandler(waiting)
    try:
        with caplog.at_level(logging.INFO, logger="agent.learn.trainer"):
            summary = Trainer(config, _default_strategy(), stop).run(seconds=120)
    finally:
        logging.getLogger("agent.learn.trainer").removeHandler(waiting)
    assert stop.reason == "waiting", "the trainer never waited after training"
    assert 0 < summary.batches_this_run < 50
    waits = [r.getMessage() for r in caplog.records if "waiting for data" in r.getMessage()]
    assert waits and "train.max_uses" in waits[-1] and "needs new shards" in waits[-1], waits


def test_publishes_with_batches_and_loss_and_prunes_but_keeps_the_newest(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    config = small_config(tmp_path, publish_batches=2, keep_versions=2)
    summary = Trainer(config, _default_strategy(), Stop()).run(max_batches=7)
    store = tmp_path / "models"
    found = versions(store, "pilotnet_small")
    # v0001..v0003 at batches 2, 4, 6 and v0004 at the stop (batch 7); two are kept.
    assert [c.manifest.version for c in found] == ["v0003", "v0004"]
    assert [c.manifest.batches for c in found] == [6, 7]
    assert summary.published == ["v0001", "v0002", "v0003", "v0004"]
    loss = found[-1].manifest.loss_by_name
    assert set(loss) == {"throttle", "steering", "total"}
    assert all(np.isfinite(v) and v >= 0 for v in loss.values())


def test_a_corrupt_or_foreign_shard_is_skipped_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    write_shards(data, 100)
    (data / "shard-zz-corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    wrong = tmp_path / "wrong"
    writer = ShardWriter(wrong, "test", (270, 480, 3), samples_per_shard=2)
    for _ in range(2):
        writer.add(np.zeros((270, 480, 3), np.uint8), 0.0, 0.0, 0.0, 0.0, (True, True))
    writer.close()
    for shard in wrong.iterdir():
        shard.rename(data / f"shard-zz-{shard.name}")
    with caplog.at_level(logging.WARNING):
        config = small_config(tmp_path, buffer_size=200, start_fill=0.2)
        summary = Trainer(config, _default_strategy(), Stop()).run(max_batches=3)
    assert summary.samples_loaded == 100
    assert summary.shards_skipped == 2
    skipped = [r.getMessage() for r in caplog.records if "skipping a shard" in r.getMessage()]
    assert len(skipped) == 2
    assert any("270x480" in line or "(270, 480, 3)" in line for line in skipped), skipped
    assert summary.batches == 3


def test_missing_data_folder_is_one_line(tmp_path: Path, run_charles) -> None:
    result = run_charles(
        "train", "--config", str(REPO / "config.toml"), "--data", str(tmp_path / "nowhere"),
        "--set", f"model.store='{tmp_path / 'models'}'", "--batches", "1", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "data folder", "does not exist", "charles collect")


def test_a_store_checkpoint_of_another_line_is_one_line(tmp_path: Path, run_charles) -> None:
    write_shards(tmp_path / "data", 10)
    model = get_line("pilotnet_small").build("none")
    checkpoint = publish(model, tmp_path / "models", "pilotnet_small", 0)
    manifest = json.loads((checkpoint.folder / "manifest.json").read_text())
    manifest["model_line"] = "model_0005_inceptionresnetv2"
    (checkpoint.folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_charles(
        "train", "--config", str(REPO / "config.toml"), "--data", str(tmp_path / "data"),
        "--set", f"model.store='{tmp_path / 'models'}'", "--batches", "1", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "pilotnet_small")


def test_the_data_folder_must_be_readable(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(CharlesError, match="not a folder"):
        Trainer(small_config(tmp_path), _default_strategy(), Stop())


# --- crash safety ----------------------------------------------------------------------------


def test_a_checkpoint_is_never_seen_half_written(tmp_path: Path) -> None:
    """A reader polling the store while the trainer publishes and prunes sees only whole
    versions: every version it lists has a manifest and weights whose hash matches."""
    write_shards(tmp_path / "data", 100)
    config = small_config(tmp_path, publish_batches=1, keep_versions=3)
    store = tmp_path / "models"
    problems: list[str] = []
    checked = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for checkpoint in versions(store, "pilotnet_small"):
                try:
                    verify_weights(checkpoint)
                    checked[0] += 1
                except Exception as error:  # a pruned version may vanish: only that is fine
                    if checkpoint.folder.exists():
                        problems.append(str(error))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        Trainer(config, _default_strategy(), Stop()).run(max_batches=12)
    finally:
        done.set()
        reader.join()
    assert checked[0] > 0
    assert problems == []
    assert len(versions(store, "pilotnet_small")) == 3


def test_kill_9_then_restart_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 200)
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        "[model]\nstore = 'models'\n[data]\nfolder = 'data'\n"
        "[train]\nbuffer_size = 40\nbatch_per_buffer = 4\nmax_uses = 1000\n"
        "warmup_batches = 3\npublish_batches = 10\nnice = 0\nsave_buffers_seconds = 1.0\n"
    )
    command = [sys.executable, "-m", "agent", "train", "--config", str(config_file)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    trainer = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    store = tmp_path / "models"
    try:
        deadline = time.monotonic() + 120
        while len(versions(store, "pilotnet_small")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(versions(store, "pilotnet_small")) >= 2, "no checkpoints published"
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    last = latest(store, "pilotnet_small")
    assert last is not None and last.manifest.batches % 10 == 0
    # Nothing half-written became visible: every version is whole, no temporary folder is one.
    for checkpoint in versions(store, "pilotnet_small"):
        verify_weights(checkpoint)
    resumed = subprocess.run(
        [*command, "--batches", "3"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from: {last.name}" in resumed.stdout
    assert f"model at batch {last.manifest.batches + 3}" in resumed.stdout
    restored = f"optimizer state restored (batch {last.manifest.batches})" in resumed.stderr
    # kill -9 can land between a publish and its optimizer save; then Adam starts afresh.
    fresh = f"no optimizer state saved at batch {last.manifest.batches}" in resumed.stderr
    assert restored or fresh, resumed.stderr[-3000:]
    newest = latest(store, "pilotnet_small")
    assert newest is not None and newest.manifest.batches == last.manifest.batches + 3
    # The shards already in the buffers' copy were not loaded twice.
    assert "buffers refilled from their last copy" in resumed.stderr


# --- tf.distribute ---------------------------------------------------------------------------

_MIRRORED = """
import sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.test_trainer import small_config
from agent.learn.cluster import make_strategy
from agent.learn.trainer import Trainer
from agent.runtime.signals import Stop
strategy = make_strategy("mirrored")
print("replicas", strategy.num_replicas_in_sync)
summary = Trainer(small_config(Path(sys.argv[1])), strategy, Stop()).run(max_batches=4)
print("batches", summary.batches, "published", ",".join(summary.published))
"""


def test_the_mirrored_strategy_trains_on_two_logical_cpu_devices(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(tmp_path)], cwd=REPO, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
    assert "batches 4 published v0001" in result.stdout
    checkpoint = latest(tmp_path / "models", "pilotnet_small")
    assert checkpoint is not None and checkpoint.manifest.batches == 4


def test_multiworker_without_a_cluster_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.learn.cluster import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(CharlesError, match="TF_CONFIG"):
        make_strategy("multiworker")


def test_config_defaults_are_the_seeds() -> None:
    train = TrainConfig()
    assert (train.buffer_size, train.start_fill, train.max_uses) == (25_000, 0.9, 1)
    assert train.warmup_batches == 1000


@pytest.mark.parametrize(
    ("tf_config", "chief"),
    [
        (None, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
        (
            {
                "cluster": {"chief": ["c:1"], "worker": ["a:1"]},
                "task": {"type": "worker", "index": 0},
            },
            False,
        ),
        ({"cluster": {"chief": ["c:1"]}, "task": {"type": "chief", "index": 0}}, True),
    ],
)
def test_only_the_chief_of_a_cluster_publishes(
    monkeypatch: pytest.MonkeyPatch, tf_config: dict | None, chief: bool
) -> None:
    from agent.learn.cluster import is_chief

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief() is chief


def test_without_saved_optimizer_state_adam_warms_up_again(tmp_path: Path) -> None:
    """Full-size steps from empty moment estimates are what the warm-up prevents."""
    write_shards(tmp_path / "data", 100)
    config = small_config(tmp_path, warmup_batches=20, learning_rate=1e-2)
    Trainer(config, _default_strategy(), Stop()).run(max_batches=6)
    (tmp_path / "training" / "pilotnet_small" / "optimizer.npz").unlink()
    resumed = Trainer(config, _default_strategy(), Stop())
    assert resumed.batches == 6  # the model's count goes on ...
    assert int(resumed.model.optimizer.iterations.numpy()) == 0  # ... Adam's starts again
    assert float(resumed.model.optimizer.learning_rate) == pytest.approx(1e-2 / 20)


def test_a_damaged_optimizer_state_starts_adam_afresh(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    config = small_config(tmp_path)
    Trainer(config, _default_strategy(), Stop()).run(max_batches=5)
    state = tmp_path / "training" / "pilotnet_small" / "optimizer.npz"
    for damage in (b"", b"PK\x03\x04truncated", state.read_bytes()[:1000]):
        state.write_bytes(damage)
        resumed = Trainer(config, _default_strategy(), Stop())
        assert int(resumed.model.optimizer.iterations.numpy()) == 0


def test_a_hostile_loss_in_a_manifest_is_refused_not_a_crash(tmp_path: Path) -> None:
    from agent.errors import ModelError

    store = tmp_path / "models"
    checkpoint = publish(get_line("pilotnet_small").build("none"), store, "pilotnet_small", 1)
    path = checkpoint.folder / "manifest.json"
    for loss, batches in (({"total": 10**400}, 1), ({"total": "x"}, 1), ({}, 2**63)):
        manifest = json.loads(path.read_text())
        manifest["loss"], manifest["batches"] = loss, batches
        path.write_text(json.dumps(manifest))
        assert versions(store, "pilotnet_small") == []
        with pytest.raises(ModelError, match="manifest"):
            latest(store, "pilotnet_small")
