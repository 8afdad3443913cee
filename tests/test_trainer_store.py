"""`charles train` and its model store: one trainer per line and store, leftovers of killed
publishes, stores it cannot publish into, damaged newest versions (issue 17, items 10, 14, 15,
16). Real `charles train` processes, real kill -9, real read-only and full file systems."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

import agent.checkpoints.publishing_lock
from agent.checkpoints.manifest import WEIGHTS_FILE
from agent.checkpoints.publish import publish
from agent.checkpoints.publishing_lock import LOCK_FILE, PublishingLock, _try_lock
from agent.checkpoints.resolve import latest, versions
from agent.config import Config
from agent.errors import CharlesError, ModelError
from agent.learn.trainer import Trainer, run_train
from agent.runtime.signals import Stop
from tests.helpers.charles import REPO, assert_one_line_error, run_charles_process
from tests.helpers.disks import fill, small_filesystem
from tests.helpers.models import constant_driver
from tests.test_store_damage import DAMAGE, reseal
from tests.test_trainer import _default_strategy, small_config, write_shards

LINE = "pilotnet_small"
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def config_storing_in(tmp_path: Path, store: Path) -> Config:
    """The small trainer config of tests/test_trainer.py, publishing into `store`."""
    config = small_config(tmp_path)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, store=str(store)))


def config_file(tmp_path: Path, store: Path | str = "models", **train: object) -> Path:
    settings = {
        "buffer_size": 40, "batch_per_buffer": 4, "max_uses": 1000, "warmup_batches": 3,
        "publish_batches": 1000, "nice": 0, "save_buffers_seconds": 3600.0, **train,
    }  # fmt: skip
    lines = [f"[model]\nstore = {json.dumps(str(store))}\n[data]\nfolder = 'data'\n[train]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_output(process: subprocess.Popen, text: str, seconds: float = 120) -> str:
    """Read `process`'s stderr (a pipe) until `text` appears; what was read."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + seconds
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and process.poll() is None, seen.decode(errors="replace")[-3000:]
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 1 << 16)
    return seen.decode(errors="replace")


# --- item 14: one trainer per line and store -------------------------------------------------


def test_a_second_trainer_is_refused_in_one_line_and_kill_9_frees_the_lock(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    (tmp_path / "empty").mkdir()
    config = str(config_file(tmp_path))
    # The first trainer waits for data (an empty folder) and holds the store meanwhile.
    first = subprocess.Popen(
        [sys.executable, "-m", "agent", "train", "--config", config, "--data", "empty"],
        cwd=tmp_path, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_output(first, "training pilotnet_small from")
        second = run_charles_process(
            "train", "--config", config, "--batches", "2", cwd=tmp_path, env=ENV
        )
        line = assert_one_line_error(
            second, "already has a trainer publishing pilotnet_small", f"pid {first.pid} on"
        )
        assert "model.store" in line
        assert "training pilotnet_small" not in second.stderr  # refused before any work
        assert versions(tmp_path / "models", LINE) == []
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 left the lock file behind, but not the lock: the kernel released it.
    assert (tmp_path / "models" / LINE / agent.checkpoints.publishing_lock.LOCK_FILE).is_file()
    third = run_charles_process(
        "train", "--config", config, "--batches", "2", cwd=tmp_path, env=ENV
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "published: v0001" in third.stdout
    assert [c.manifest.batches for c in versions(tmp_path / "models", LINE)] == [2]


def test_cluster_workers_leave_the_lock_to_their_chief(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the chief of a multi-worker cluster publishes, so only it holds the lock: its
    workers start beside it; any other trainer of the line is refused."""
    from agent.checkpoints.publishing_lock import PublishingLock

    write_shards(tmp_path / "data", 100)
    config = small_config(tmp_path)
    store = tmp_path / "models"
    cluster = {"worker": ["a:1", "b:1"]}
    with PublishingLock(store, LINE):  # the chief, here in this process
        monkeypatch.setenv(
            "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
        )
        summary = run_train(config, max_batches=2)
        assert summary.batches == 2 and summary.published == []
        monkeypatch.delenv("TF_CONFIG")
        with pytest.raises(ModelError, match="already has a trainer publishing") as caught:
            run_train(config, max_batches=2)
        assert f"pid {os.getpid()}" in str(caught.value)
    assert versions(store, LINE) == []


def test_the_lock_file_is_never_reached_through_a_link(tmp_path: Path) -> None:
    from agent.checkpoints.publishing_lock import PublishingLock

    target = tmp_path / "someone-elses-file"
    target.write_text("precious")
    root = tmp_path / "models" / LINE
    root.mkdir(parents=True)
    (root / agent.checkpoints.publishing_lock.LOCK_FILE).symlink_to(target)
    with pytest.raises(ModelError, match="symbolic link") as caught:
        PublishingLock(tmp_path / "models", LINE)
    assert "\n" not in str(caught.value)
    assert target.read_text() == "precious"


# --- item 10: what killed publishes leave behind ---------------------------------------------

_KILLED_MID_PUBLISH = """
import os, sys
from pathlib import Path
import agent.checkpoints.publish
from tests.helpers.models import constant_driver

real_rename = os.rename

def stuck(source, target, *args, **kwargs):
    # Every byte of the version is written; kill -9 lands before it is renamed into place.
    if Path(source).name.startswith("."):
        print("publishing", file=sys.stderr, flush=True)
        sys.stdin.read()
    return real_rename(source, target, *args, **kwargs)

agent.checkpoints.publish.os.rename = stuck
agent.checkpoints.publish.publish(constant_driver(0.1, 0.1), Path(sys.argv[1]), "pilotnet_small", 5)
"""


def test_leftovers_of_killed_publishes_are_removed_at_the_next_start(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    store = tmp_path / "models"
    publish(constant_driver(0.2, 0.2), store, LINE, batches=1)
    root = store / LINE
    for _ in range(2):  # two trainers killed with -9 while publishing
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLED_MID_PUBLISH, str(store)], cwd=REPO,
            env={**os.environ, **ENV}, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_for_output(child, "publishing")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    (root / ".pruned-v0000-0123abcd" / "x").mkdir(parents=True)  # a prune killed mid-delete
    outside = tmp_path / "outside"
    (outside / "precious").mkdir(parents=True)
    (root / ".staging-link").symlink_to(outside, target_is_directory=True)
    # Not Charles's: kept.
    (root / ".keep").write_text("someone else's")
    (root / ".writing-v0007").mkdir()
    staged = sorted(p.name for p in root.iterdir() if p.name.startswith(".staging-"))
    assert len(staged) == 3, staged

    summary = run_train(small_config(tmp_path), max_batches=1)

    assert summary.published == ["v0002"]
    hidden = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
    assert [name for name in hidden if name.startswith((".staging-", ".pruned-"))] == []
    assert hidden == [".keep", agent.checkpoints.publishing_lock.LOCK_FILE, ".writing-v0007"]
    assert (outside / "precious").is_dir()  # the link was removed, never followed
    assert [c.manifest.version for c in versions(store, LINE)] == ["v0001", "v0002"]


# --- item 16: a store the trainer cannot publish into ----------------------------------------


def test_a_store_that_is_a_file_is_refused_before_training(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    store = tmp_path / "models"
    store.write_text("not a folder")
    config = str(config_file(tmp_path, store, publish_batches=1))
    result = run_charles_process(
        "train", "--config", config, "--batches", "5", cwd=tmp_path, env=ENV
    )
    assert_one_line_error(result, f"model store {store} is not a folder", "model.store")
    assert "training pilotnet_small" not in result.stderr  # not one batch was trained
    assert store.read_text() == "not a folder"


def test_a_line_folder_that_is_a_file_is_refused_before_training(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / LINE).write_text("not a folder")
    with pytest.raises(ModelError, match=f"{LINE} is not a folder"):
        Trainer(small_config(tmp_path), _default_strategy(), Stop())


def _remount_read_only(mountpoint: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)


def test_a_read_only_store_is_refused_before_training(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    with small_filesystem(8 << 20) as disk:
        store = disk / "models"
        publish(constant_driver(0.2, 0.2), store, LINE, batches=10)
        _remount_read_only(disk)
        config = config_storing_in(tmp_path, store)
        with pytest.raises(ModelError) as caught:
            Trainer(config, _default_strategy(), Stop())
        message = str(caught.value)
        assert f"model store {store} is not a folder Charles can write to" in message
        assert "Read-only file system" in message and "\n" not in message


def test_a_full_store_is_refused_before_training(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    with small_filesystem(8 << 20) as disk:
        store = disk / "models"
        publish(constant_driver(0.2, 0.2), store, LINE, batches=10)
        fill(disk, leave_bytes=200_000)
        config = config_storing_in(tmp_path, store)
        with pytest.raises(ModelError) as caught:
            Trainer(config, _default_strategy(), Stop())
        message = str(caught.value)
        assert "cannot publish pilotnet_small" in message and "MB free" in message
        assert "free some space" in message and "\n" not in message


# --- item 15: a damaged newest version at a trainer's start ----------------------------------


@pytest.mark.parametrize("damage", ["nan", "extra array", "wrong shape"])
def test_a_trainer_resumes_from_the_newest_good_version(tmp_path: Path, damage: str) -> None:
    write_shards(tmp_path / "data", 100)
    store = tmp_path / "models"
    good = publish(constant_driver(0.2, -0.4), store, LINE, batches=100)
    bad = publish(constant_driver(0.5, 0.5), store, LINE, batches=200)
    with h5py.File(bad.weights, "a") as file:
        DAMAGE[damage](file)
    reseal(bad.folder)
    trainer = Trainer(small_config(tmp_path), _default_strategy(), Stop())
    assert trainer.resumed_from == good.name and trainer.batches == 100
    frames = np.zeros((1, 90, 160, 3), np.uint8)
    throttle, steering = (float(o[0, 0]) for o in trainer.model(frames, training=False))
    assert (round(throttle, 4), round(steering, 4)) == (0.2, -0.4)


def test_a_trainer_never_starts_fresh_when_every_version_is_damaged(tmp_path: Path) -> None:
    write_shards(tmp_path / "data", 100)
    store = tmp_path / "models"
    only = publish(constant_driver(0.2, -0.4), store, LINE, batches=100)
    with h5py.File(only.weights, "a") as file:
        DAMAGE["missing array"](file)
    reseal(only.folder)
    with pytest.raises(CharlesError, match="no intact checkpoint of pilotnet_small"):
        Trainer(small_config(tmp_path), _default_strategy(), Stop())
    # Readable and finite, so found without the fit check; it is the fit that fails.
    assert latest(store, LINE, check_fit=False).folder == only.folder
    assert (only.folder / WEIGHTS_FILE).is_file()


# --- the publishing lock itself, in this process -----------------------------------------------


def test_the_lock_names_its_holder_and_a_second_one_is_refused_with_it(tmp_path: Path) -> None:
    """flock belongs to an open file, so a second lock in this very process is refused like a
    second trainer; the refusal quotes who holds it, as the holder wrote it over older text."""
    store = tmp_path / "models"
    (store / LINE).mkdir(parents=True)
    lock_file = store / LINE / LOCK_FILE
    lock_file.write_text("x" * 500)  # a longer text of an earlier holder, overwritten whole
    old_umask = os.umask(0)
    try:
        first = PublishingLock(store, LINE)
    finally:
        os.umask(old_umask)
    holder = json.loads(lock_file.read_text(encoding="utf-8"))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    since = datetime.fromisoformat(holder["since"])
    assert since.utcoffset() == timedelta(0) and since.microsecond == 0
    assert abs((datetime.now(timezone.utc) - since).total_seconds()) < 60
    with pytest.raises(ModelError) as caught:
        PublishingLock(store, LINE)
    assert str(caught.value) == (
        f"model store {store} already has a trainer publishing {LINE} (pid {os.getpid()} on "
        f"{holder['host']} since {holder['since']}); stop it first or set model.store to another "
        "folder (one trainer per model line and store)"
    )
    first.release()
    first.release()  # twice is harmless
    with pytest.raises(RuntimeError, match=r"^the publishing lock is not held$"):
        first.remove_leftovers()
    with PublishingLock(store, LINE) as again:  # released: the next trainer takes it
        assert again.store == store and again.line == LINE
    assert lock_file.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"pid": 7, "host": "rig\\u00e9", "since": "today"}', "pid 7 on rig\u00e9 since today"),
        ('{"pid": 7, "host": "' + "h" * 300 + '", "since": "t"}', "pid 7 on " + "h" * 148 + "..."),
        ("not json", "another process"),
        ('{"pid": "seven", "host": "a", "since": "b"}', "another process"),
    ],
)
def test_the_holder_is_read_from_untrusted_text(tmp_path: Path, text: str, expected: str) -> None:
    store = tmp_path / "models"
    with PublishingLock(store, LINE) as held:
        (store / LINE / LOCK_FILE).write_bytes(text.encode("utf-8"))
        assert held._holder() == expected


def test_a_lock_file_that_is_no_file_or_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "models"
    (store / LINE / LOCK_FILE).mkdir(parents=True)
    with pytest.raises(ModelError) as caught:
        PublishingLock(store, LINE)
    assert str(caught.value) == (
        f"model store {store}: {LOCK_FILE} is not a regular file; delete it"
    )
    (store / LINE / LOCK_FILE).rmdir()
    (store / LINE / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelError) as caught:
        PublishingLock(store, LINE)
    assert str(caught.value) == (
        f"model store {store}: {LOCK_FILE} is a symbolic link, which the model store never "
        "follows; replace it with the real file or folder"
    )
    (store / LINE / LOCK_FILE).unlink()
    if os.geteuid() != 0:  # root may write anywhere
        (store / LINE).chmod(0o555)
        with pytest.raises(ModelError) as caught:
            PublishingLock(store, LINE)
        assert str(caught.value).startswith(f"model store {store} is not a folder Charles can")


def test_leftovers_are_removed_without_following_links_and_one_stuck_stops_no_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "models"
    root = store / LINE
    kept = tmp_path / "not-the-stores"
    kept.mkdir()
    (kept / "precious").write_text("keep")
    with PublishingLock(store, LINE) as held:
        (root / ".staging-a").mkdir()
        (root / ".staging-a" / "model.weights.h5").write_bytes(b"half")
        (root / ".pruned-v0001-1234").mkdir()
        (root / ".staging-link").symlink_to(kept)  # a link by that name: the link goes
        (root / ".staging-stuck").write_text("x")
        (root / "v0002").mkdir()  # not a leftover
        real_unlink = os.unlink

        def unlink(path: str, *args: object, **kwargs: object) -> None:
            if path.endswith(".staging-link"):
                raise PermissionError(13, "Permission denied", path)
            real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(agent.checkpoints.publishing_lock.os, "unlink", unlink)
        with caplog.at_level("WARNING", logger="agent.checkpoints.publishing_lock"):
            removed = held.remove_leftovers()
        assert removed == [".pruned-v0001-1234", ".staging-a", ".staging-stuck"]
        assert caplog.messages == [
            f"model store: could not remove {root / '.staging-link'} ([Errno 13] Permission "
            f"denied: '{root / '.staging-link'}')"
        ]
        monkeypatch.setattr(agent.checkpoints.publishing_lock.os, "unlink", real_unlink)
        assert held.remove_leftovers() == [".staging-link"]
    assert (kept / "precious").read_text() == "keep"
    assert sorted(p.name for p in root.iterdir()) == [LOCK_FILE, "v0002"]


def test_on_windows_the_lock_is_one_byte_far_past_the_holders_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no flock: msvcrt.locking, faked here at that boundary, on one byte at 1 MiB
    (a locked byte cannot be read, and readers must read the holder's text)."""
    calls: list[tuple[int, int, int, int]] = []
    held_by_other = False

    def locking(fd: int, mode: int, count: int) -> None:
        calls.append((fd, os.lseek(fd, 0, os.SEEK_CUR), mode, count))
        if held_by_other:
            raise PermissionError(13, "Permission denied")

    fake = types.SimpleNamespace(LK_NBLCK=2, locking=locking)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        with monkeypatch.context() as windows:
            windows.setattr(agent.checkpoints.publishing_lock.os, "name", "nt")
            assert _try_lock(fd) is True
            held_by_other = True
            assert _try_lock(fd) is False
    finally:
        os.close(fd)
    assert calls == [(fd, 1 << 20, 2, 1), (fd, 1 << 20, 2, 1)]


def test_a_lock_the_kernel_refuses_is_held_by_another_and_other_errors_are_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT)
    try:
        for code in (errno.EACCES, errno.EAGAIN):

            def refused(*_args: object, code: int = code) -> None:
                raise OSError(code, os.strerror(code))

            monkeypatch.setattr(fcntl, "flock", refused)
            assert _try_lock(fd) is False

        def broken(*_args: object) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(fcntl, "flock", broken)
        with pytest.raises(OSError, match="No locks available"):
            _try_lock(fd)
    finally:
        os.close(fd)
