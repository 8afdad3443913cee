"""A full disk never costs a published checkpoint (issue 17, item 9).

The store is a real tmpfs of a few megabytes (tests/helpers/disks.py), so the kernel's own
ENOSPC meets the real publishing code and the real `charles train`. A pilotnet_small checkpoint
is ~1.95 MB: a 5 MB store holds two. The trainer used to die with SIGSEGV there (HDF5's
clean-up at exit, after Keras's HDF5 writer met the full disk) and the store ended up empty:
Keras wrote the weights with Adam's two moment arrays (~5.7 MB) before the slim copy (~1.9 MB
more), so not even the first publish fitted.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import agent.checkpoints.publish
import agent.checkpoints.publishing_lock
from agent.checkpoints.load import load_into
from agent.checkpoints.manifest import Checkpoint
from agent.checkpoints.publish import _publish_failed, not_writable, publish
from agent.checkpoints.resolve import versions
from agent.errors import ModelError
from agent.learn.trainer import Trainer
from agent.nets.registry import get_line
from agent.runtime.signals import Stop
from tests.helpers.charles import assert_one_line_error, run_charles_process
from tests.helpers.disks import fill, free_bytes, small_filesystem
from tests.helpers.models import constant_driver
from tests.test_trainer import _default_strategy, small_config, write_shards

LINE = "pilotnet_small"
DISK = 5_000_000
"""Bytes: room for two pilotnet_small checkpoints, not three."""


def assert_intact(store: Path, expected: list[str]) -> list[Checkpoint]:
    """The versions of the store are `expected`, each loads strictly, nothing else is there."""
    found = versions(store, LINE)
    assert [c.manifest.version for c in found] == expected
    for checkpoint in found:
        load_into(get_line(LINE).build("none"), checkpoint, LINE)
    hidden = [p.name for p in (store / LINE).iterdir() if p.name.startswith(".")]
    assert set(hidden) <= {agent.checkpoints.publishing_lock.LOCK_FILE}, (
        hidden
    )  # no staging folder left behind
    return found


def test_a_trainer_whose_store_fills_up_stops_in_one_line_and_keeps_every_version(
    tmp_path: Path,
) -> None:
    write_shards(tmp_path / "data", 100)
    with small_filesystem(DISK) as disk:
        store = disk / "models"
        config = tmp_path / "config.toml"
        config.write_text(
            f"[model]\nstore = {json.dumps(str(store))}\n[data]\nfolder = 'data'\n"
            "[train]\nbuffer_size = 40\nbatch_per_buffer = 4\nmax_uses = 1000\n"
            "warmup_batches = 3\npublish_batches = 2\nkeep_versions = 2\nnice = 0\n"
            "save_buffers_seconds = 3600.0\n"
        )
        result = run_charles_process(
            "train", "--config", str(config), "--batches", "40", cwd=tmp_path,
            env={"TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
        assert result.returncode == 1, (result.returncode, result.stderr[-3000:])  # not SIGSEGV
        line = assert_one_line_error(result, "pilotnet_small", str(store), "free some space")
        assert "intact" in line
        assert "could not keep" not in result.stderr  # no second try at a publish that failed
        found = assert_intact(store, ["v0001", "v0002"])
        assert [c.manifest.batches for c in found] == [2, 4]


@pytest.mark.parametrize("checked", [True, False], ids=["room checked", "the write fails"])
def test_a_publish_onto_a_full_disk_leaves_the_versions_as_they_were(
    monkeypatch: pytest.MonkeyPatch, checked: bool
) -> None:
    model = constant_driver(0.2, -0.4, LINE)
    with small_filesystem(DISK) as disk:
        store = disk / "models"
        publish(model, store, LINE, batches=1)
        publish(model, store, LINE, batches=2)
        free = free_bytes(disk)
        if not checked:  # past the check: the kernel's ENOSPC in the middle of the weights
            monkeypatch.setattr(agent.checkpoints.publish, "require_room", lambda *_: None)
        with pytest.raises(ModelError) as caught:
            publish(model, store, LINE, batches=3)
        message = str(caught.value)
        assert "\n" not in message and "free some space" in message, message
        assert "MB free" in message if checked else "No space left on device" in message
        assert_intact(store, ["v0001", "v0002"])
        assert free_bytes(disk) == free  # what the failed publish wrote is gone again


def test_a_trainer_never_prunes_after_a_publish_that_failed(tmp_path: Path) -> None:
    """keep_versions = 2 with three versions in the store: a successful publish would prune
    the oldest two; a failed one must not touch them."""
    write_shards(tmp_path / "data", 100)
    model = constant_driver(0.2, -0.4, LINE)
    with small_filesystem(9_000_000) as disk:
        store = disk / "models"
        for batches in (1, 2, 3):
            publish(model, store, LINE, batches=batches)
        config = small_config(tmp_path, publish_batches=1, keep_versions=2)
        config = type(config)(model=type(config.model)(store=str(store)), data=config.data,
                              train=config.train)  # fmt: skip
        trainer = Trainer(config, _default_strategy(), Stop())  # room for one more at start
        fill(disk, leave_bytes=1_000_000)  # then another writer fills the disk
        with pytest.raises(ModelError, match="free some space"):
            trainer.run(max_batches=5)
        assert trainer.batches == 4  # one batch trained, its publish failed
        assert_intact(store, ["v0001", "v0002", "v0003"])


def test_the_one_line_for_each_kind_of_store_that_cannot_be_written() -> None:
    """Room errors (a full disk, a quota, a file too large) say to free space; anything else
    says to make the store writable; an OS message is kept to one short line."""
    store = Path("/data/models")
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        message = str(not_writable(store, OSError(code, "No room")))
        assert message == "model store /data/models is full (No room); free some space there"
    assert str(not_writable(store, OSError(errno.EACCES, "Permission denied"))) == (
        "model store /data/models is not a folder Charles can write to (Permission denied); "
        "set model.store to a writable folder"
    )
    long = not_writable(store, ValueError("embedded null byte\n" + "x" * 200))
    assert str(long).startswith("model store /data/models is not a folder Charles can write to (")
    assert "embedded null byte " + "x" * 58 + "...); set model.store" in str(long)


def test_the_one_line_for_a_publish_that_failed_names_the_cure() -> None:
    root = Path("/data/models/pilotnet_small")
    tail = "(the versions already published are intact)"

    def failed(code: int, why: str = "boom") -> str:
        return str(_publish_failed(root, "pilotnet_small v0003", OSError(code, why)))

    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        assert failed(code, "No space left on device") == (
            "could not publish pilotnet_small v0003 into model store /data/models: No space "
            f"left on device; free some space there {tail}"
        )
    for code in (errno.EROFS, errno.EACCES, errno.EPERM):
        assert failed(code) == (
            "could not publish pilotnet_small v0003 into model store /data/models: boom; make it "
            f"writable or set model.store to a writable folder {tail}"
        )
    assert failed(errno.EIO, "Input/output error\n" + "y" * 100).endswith(
        "Input/output error " + "y" * 58 + "...; check the disk " + tail
    )
    assert str(_publish_failed(root, "l", OSError("no errno"))) == (
        f"could not publish l into model store /data/models: no errno; check the disk {tail}"
    )
