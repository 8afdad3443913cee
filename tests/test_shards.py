"""Sample shards: writing, atomic publishing, reading, and watching a data folder."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.learn import shard_format, shard_watcher, shard_writer
from agent.learn.shard_format import SHARD_PREFIX, SHARD_SUFFIX, Shard, ShardError, read_shard
from agent.learn.shard_watcher import ShardWatcher
from agent.learn.shard_writer import ShardWriter
from agent.nets.registry import OUTPUT_NAMES

SHAPE = (4, 6, 3)
NAME = re.compile(r"shard-[A-Za-z0-9_.-]+-\d+-\d{13}-\d{6,}\.npz")


def _frame(sample_id: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A frame that says which sample it is (first two bytes), the rest noise."""
    frame = np.random.default_rng(sample_id).integers(0, 256, size=shape, dtype=np.uint8)
    frame[0, 0, 0], frame[0, 0, 1] = sample_id % 256, sample_id // 256
    return frame


def _frame_id(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])


def _write(
    folder: Path, ids: range, per_shard: int = 5, shape: tuple[int, int, int] = SHAPE
) -> list[Path]:
    """Shards of the samples `ids` (labels derived from the id), all published."""
    writer = ShardWriter(folder, "autopilot", shape, samples_per_shard=per_shard)
    for i in ids:
        writer.add(_frame(i, shape), i / 1000, -i / 1000, float(i), 1.7e9 + i, (i % 2 == 0, True))
    writer.close()
    return sorted(folder.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))


def _shard_arrays(n: int = 3, **changes: object) -> dict[str, object]:
    """The arrays of a valid shard of `n` samples, with `changes` applied."""
    meta = {
        "format": "charles-shard",
        "version": 1,
        "source": "test",
        "input_shape": list(SHAPE),
        "writer": "test",
    }
    arrays: dict[str, object] = {
        "frames": np.zeros((n, *SHAPE), dtype=np.uint8),
        "throttle": np.zeros(n, dtype=np.float32),
        "steering": np.zeros(n, dtype=np.float32),
        "speed": np.full(n, np.nan, dtype=np.float32),
        "time": np.zeros(n, dtype=np.float64),
        "sets": np.ones((n, 2), dtype=bool),
        "meta": np.array(json.dumps(meta)),
    }
    arrays.update(changes)
    return {key: value for key, value in arrays.items() if value is not None}


# --- writing and reading ---------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "data"  # created with its parents
    writer = ShardWriter(folder, "autopilot", SHAPE, samples_per_shard=3)
    published = []
    for i in range(7):
        writer.add(
            _frame(i),
            i / 10,
            -i / 10,
            float("nan") if i == 2 else i * 1.5,
            1.7e9 + i / 3,
            (i % 2 == 0, i % 3 == 0),
        )
        published.append(writer.shards_written)
    assert published == [0, 0, 1, 1, 1, 2, 2]  # a shard appears as soon as it holds 3
    path = writer.flush()
    assert path is not None and path.parent == folder
    assert writer.flush() is None  # nothing held: nothing published
    writer.close()
    assert (writer.shards_written, writer.samples_written) == (3, 7)

    paths = sorted(folder.iterdir())
    assert len(paths) == 3 and all(NAME.fullmatch(p.name) for p in paths)
    loaded = [read_shard(p, SHAPE) for p in paths]
    assert [len(s) for s in loaded] == [3, 3, 1]
    frames = np.concatenate([s.frames for s in loaded])
    assert [_frame_id(f) for f in frames] == list(range(7))
    assert np.array_equal(frames[4], _frame(4))
    throttle = np.concatenate([s.throttle for s in loaded])
    steering = np.concatenate([s.steering for s in loaded])
    assert throttle.dtype == steering.dtype == np.float32
    assert np.array_equal(throttle, np.float32(np.arange(7) / 10))
    assert np.array_equal(steering, np.float32(-np.arange(7) / 10))
    labels = np.concatenate([s.labels for s in loaded])
    assert labels.dtype == np.float32 and labels.shape == (7, 2)
    assert np.array_equal(labels[:, OUTPUT_NAMES.index("throttle")], throttle)
    assert np.array_equal(labels[:, OUTPUT_NAMES.index("steering")], steering)
    speed = np.concatenate([s.speed for s in loaded])
    assert np.isnan(speed[2]) and speed[3] == 4.5
    times = np.concatenate([s.time for s in loaded])
    assert times.dtype == np.float64 and times[5] == 1.7e9 + 5 / 3  # float64: no rounding
    sets = np.concatenate([s.sets for s in loaded])
    assert sets.dtype == bool and sets.shape == (7, 2)
    assert sets[:, 0].tolist() == [i % 2 == 0 for i in range(7)]
    assert sets[:, 1].tolist() == [i % 3 == 0 for i in range(7)]
    assert loaded[0].source == "autopilot" and loaded[0].path == paths[0]


def test_meta_and_file_layout(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, range(4))
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            ["frames", "throttle", "steering", "speed", "time", "sets", "meta"]
        )
        meta = json.loads(str(npz["meta"][()]))
    assert meta["format"] == "charles-shard" and meta["version"] == 1
    assert meta["input_shape"] == list(SHAPE) and meta["source"] == "autopilot"
    assert isinstance(meta["writer"], str) and meta["writer"]


def test_names_are_unique_for_writers_in_the_same_millisecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_writer, "_unix_millis", lambda: 1_700_000_000_000)
    first = ShardWriter(tmp_path, "a", SHAPE, samples_per_shard=1)
    second = ShardWriter(tmp_path, "b", SHAPE, samples_per_shard=1)
    for i in range(3):
        first.add(_frame(i), 0.0, 0.0, 0.0, 0.0, (True, True))
        second.add(_frame(i), 0.0, 0.0, 0.0, 0.0, (True, True))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 6
    assert all(NAME.fullmatch(n) and "-1700000000000-" in n for n in names)
    assert all(f"-{os.getpid()}-" in n for n in names)
    sources = sorted(read_shard(tmp_path / n, SHAPE).source for n in names)
    assert sources == ["a"] * 3 + ["b"] * 3  # nothing overwritten


def test_host_names_are_sanitized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_writer.socket, "gethostname", lambda: "my host/../ü:1")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", shard_writer._host_name())


@pytest.mark.parametrize(
    "change",
    [
        {"frame": np.zeros((4, 7, 3), dtype=np.uint8)},
        {"frame": np.zeros(SHAPE, dtype=np.float32)},
        {"throttle": 1.5},
        {"steering": float("nan")},
        {"throttle": float("-inf")},
        {"speed": float("inf")},
        {"time": float("nan")},
        {"sets": (True,)},
    ],
    ids=lambda change: next(iter(change)),
)
def test_add_refuses_bad_samples(tmp_path: Path, change: dict[str, object]) -> None:
    writer = ShardWriter(tmp_path, "autopilot", SHAPE, samples_per_shard=1)
    sample: dict[str, object] = {
        "frame": _frame(0),
        "throttle": 0.5,
        "steering": -0.5,
        "speed": float("nan"),
        "time": 1.7e9,
        "sets": (True, False),
    }
    with pytest.raises(ValueError):
        writer.add(**{**sample, **change})  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    writer.add(**sample)  # type: ignore[arg-type]  # the writer still works
    assert writer.shards_written == 1


def test_publishing_leaves_no_temporary_files(tmp_path: Path) -> None:
    paths = _write(tmp_path, range(12), per_shard=4)
    assert sorted(tmp_path.iterdir()) == paths  # only the three shards, nothing hidden


def test_publishing_is_atomic_for_a_reader_polling_meanwhile(tmp_path: Path) -> None:
    """A reader polling in a tight loop while shards are written only ever sees whole ones."""
    shape = (48, 64, 3)  # noise frames: about 9 KiB each, so a shard takes a while to write
    shard_count, per_shard = 40, 10
    watcher = ShardWatcher(tmp_path, shape)
    seen: list[int] = []
    done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            _write(tmp_path, range(shard_count * per_shard), per_shard=per_shard, shape=shape)
        except BaseException as error:  # reported by the main thread
            failures.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    polls = 0
    thread.start()
    try:
        while not done.is_set():
            for shard in watcher.poll():
                seen.extend(_frame_id(f) for f in shard.frames)
            polls += 1
    finally:
        thread.join()
    for shard in watcher.poll():  # whatever was published after the last poll
        seen.extend(_frame_id(f) for f in shard.frames)
    assert not failures
    assert watcher.skipped == 0
    assert polls > shard_count  # the reader really raced the writer
    assert sorted(seen) == list(range(shard_count * per_shard))  # each sample exactly once
    assert len(watcher.loaded_names) == shard_count


# --- bad shards ------------------------------------------------------------------------------


class _Trap:
    """Unpickling this would create a folder: the proof that a data file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _bad_shards(folder: Path, valid: Path) -> dict[str, str]:
    """Write one bad shard of each kind into `folder`; name -> a phrase its message holds."""
    data = valid.read_bytes()
    (folder / "shard-truncated.npz").write_bytes(data[: len(data) // 2])
    (folder / "shard-noise.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    np.savez(folder / "shard-wrongkeys.npz", a=np.zeros(3), b=np.ones(2))
    _write(folder / "big", range(3), shape=(8, 8, 3))
    (big,) = (folder / "big").iterdir()
    big.rename(folder / "shard-bigframes.npz")
    (folder / "shard-link.npz").symlink_to(valid)
    nan = np.array([0.1, np.nan, 0.3], dtype=np.float32)
    np.savez_compressed(folder / "shard-nan.npz", **_shard_arrays(steering=nan))
    marker = folder.parent / "pickle-ran"
    trap = np.array([_Trap(marker)], dtype=object)
    np.savez(folder / "shard-pickle.npz", **_shard_arrays(frames=trap))
    (folder / "shard-folder.npz").mkdir()
    return {
        "shard-truncated.npz": "not a valid .npz",
        "shard-noise.npz": "not a valid .npz",
        "shard-wrongkeys.npz": "lacks the arrays",
        "shard-bigframes.npz": "holds 8x8 frames but the model line takes 4x6",
        "shard-link.npz": "symbolic link",
        "shard-nan.npz": "steering labels include NaN",
        "shard-pickle.npz": "Python objects",
        "shard-folder.npz": "not a regular file",
    }


def test_bad_shards_are_skipped_once_each_and_good_ones_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data"
    good = _write(folder, range(10), per_shard=5)
    bad = _bad_shards(folder, good[0])
    (folder / ".shard-x.npz.1234.tmp").write_bytes(b"half a shard")  # a writer at work
    (folder / "notes.txt").write_text("not a shard")
    (folder / "histogram-host-1.png").write_bytes(b"")

    watcher = ShardWatcher(folder, SHAPE)
    with caplog.at_level(logging.WARNING, logger="agent.learn.shard_watcher"):
        loaded = watcher.poll()
        again = watcher.poll()
    assert sorted(s.path.name for s in loaded) == sorted(p.name for p in good)
    assert sorted(_frame_id(f) for s in loaded for f in s.frames) == list(range(10))
    assert again == []
    assert watcher.skipped == len(bad)
    assert watcher.loaded_names == {p.name for p in good}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(bad)  # one line per bad shard, none on the second poll
    for name, phrase in bad.items():
        (line,) = [w for w in warnings if f"/{name} " in w]
        assert phrase in line and "\n" not in line, line
    assert not (tmp_path / "pickle-ran").exists()


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"sets": None}, "lacks the arrays sets"),
        ({"extra": np.zeros(3)}, "unknown arrays"),
        ({"throttle": np.zeros(3, dtype=np.float64)}, "its throttle is float64"),
        ({"frames": np.zeros((3, 4, 6, 4), dtype=np.uint8)}, "4 channels"),
        ({"time": np.zeros(2)}, "differ in length"),
        ({"sets": np.ones((3, 3), dtype=bool)}, "one column per output"),
        ({"throttle": np.array([0.0, 1.5, 0.0], dtype=np.float32)}, "leave [-1, 1]"),
        ({"speed": np.array([0.0, np.inf, 0.0], dtype=np.float32)}, "infinity"),
        ({"meta": np.array("{not json")}, "not JSON"),
        ({"meta": np.array(json.dumps({"format": "other"}))}, "not a charles-shard"),
        ({"meta": np.array(b"bytes")}, "meta is not a short text"),
        (
            {"meta": np.array(json.dumps({"format": "charles-shard", "version": 2}))},
            "version 2",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_read_shard_names_the_problem(
    tmp_path: Path, changes: dict[str, object], phrase: str
) -> None:
    path = tmp_path / "shard-bad.npz"
    np.savez_compressed(path, **_shard_arrays(**changes))
    with pytest.raises(ShardError) as caught:
        read_shard(path, SHAPE)
    message = str(caught.value)
    assert phrase in message and str(path) in message and "\n" not in message


def test_empty_shard_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard-empty.npz"
    np.savez_compressed(path, **_shard_arrays(n=0))
    with pytest.raises(ShardError, match="no samples"):
        read_shard(path, SHAPE)


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    for key in ("frames", "meta"):
        path = tmp_path / f"shard-{key}.npz"
        np.savez(path, **_shard_arrays(**{key: np.array([_Trap(marker)], dtype=object)}))
        with pytest.raises(ShardError, match="Python objects"):
            read_shard(path, SHAPE)
    assert not marker.exists()
    np.load(path, allow_pickle=True)["meta"]  # the trap works: loading it would run code
    assert marker.is_dir()


def test_size_limits_refuse_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (path,) = _write(tmp_path, range(5))
    monkeypatch.setattr(shard_format, "MAX_SHARD_BYTES", path.stat().st_size - 1)
    with pytest.raises(ShardError, match="bytes, more than"):
        read_shard(path, SHAPE)
    # Compressed zeros: a small file whose arrays unpack to far more than the limit.
    zeros = tmp_path / "shard-zeros.npz"
    np.savez_compressed(zeros, **_shard_arrays(n=20_000))
    monkeypatch.setattr(shard_format, "MAX_SHARD_BYTES", 10**9)
    monkeypatch.setattr(shard_format, "MAX_SHARD_DATA_BYTES", 200_000)
    assert zeros.stat().st_size < 200_000
    with pytest.raises(ShardError, match="unpack to"):
        read_shard(zeros, SHAPE)


# --- the watcher -----------------------------------------------------------------------------


def test_watcher_finds_new_shards_in_name_order(tmp_path: Path) -> None:
    watcher = ShardWatcher(tmp_path, SHAPE)
    assert watcher.poll() == []
    first = _write(tmp_path, range(10), per_shard=5)
    got = watcher.poll()
    assert [s.path for s in got] == first
    later = set(_write(tmp_path, range(10, 15), per_shard=5)) - set(first)
    assert [s.path for s in watcher.poll()] == sorted(later)
    assert watcher.poll() == []
    assert watcher.loaded_names == {p.name for p in [*first, *later]}


def test_watcher_skips_names_already_loaded_and_honours_a_limit(tmp_path: Path) -> None:
    paths = _write(tmp_path, range(25), per_shard=5)
    restarted = ShardWatcher(tmp_path, SHAPE, already_loaded=[paths[0].name, paths[1].name])
    first = restarted.poll(limit=2)
    assert [s.path for s in first] == paths[2:4]
    assert [s.path for s in restarted.poll(limit=2)] == paths[4:]
    assert restarted.poll() == []


def test_watcher_ignores_a_shard_deleted_before_it_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _write(tmp_path, range(10), per_shard=5)
    real = shard_watcher.read_shard

    def delete_first(path: Path, input_shape: tuple[int, int, int]) -> Shard:
        if path == paths[0]:
            path.unlink()
        return real(path, input_shape)

    monkeypatch.setattr(shard_watcher, "read_shard", delete_first)
    watcher = ShardWatcher(tmp_path, SHAPE)
    with caplog.at_level(logging.WARNING):
        assert [s.path for s in watcher.poll()] == paths[1:]
    assert watcher.skipped == 0 and not caplog.records


def test_missing_data_folder(tmp_path: Path) -> None:
    watcher = ShardWatcher(tmp_path / "nowhere", SHAPE)
    with pytest.raises(ShardError, match="does not exist; start charles collect") as caught:
        watcher.poll()
    assert str(tmp_path / "nowhere") in str(caught.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(ShardError, match="is not a folder"):
        ShardWatcher(tmp_path / "file", SHAPE).poll()


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions, not root"
)
def test_unlistable_data_folder(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o000)
    try:
        with pytest.raises(ShardError, match="cannot be listed") as caught:
            ShardWatcher(folder, SHAPE).poll()
        assert str(folder) in str(caught.value)
    finally:
        folder.chmod(0o755)


def test_data_folder_that_cannot_be_listed_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same refusal as above, where permissions cannot cause it (root, Windows)."""

    def refuse(path: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shard_watcher.os, "scandir", refuse)
    with pytest.raises(ShardError, match=r"cannot be listed \(Permission denied\)") as caught:
        ShardWatcher(tmp_path, SHAPE).poll()
    assert str(tmp_path) in str(caught.value)


# --- intake order and listing ------------------------------------------------------------------


def _renamed(paths: list[Path], names: list[str]) -> list[Path]:
    """Real shards given collectors' names (host, pid, Unix ms, sequence) other than ours."""
    renamed = []
    for path, name in zip(paths, names, strict=True):
        path.rename(path.with_name(name))
        renamed.append(path.with_name(name))
    return renamed


def test_a_backlog_from_two_hosts_is_taken_oldest_first_interleaved(tmp_path: Path) -> None:
    """Name order would take all of alpha's shards before any of beta's."""
    paths = _write(tmp_path, range(30), per_shard=5)
    names = [
        "shard-alpha-11-1700000000000-000001.npz", "shard-alpha-11-1700000002000-000002.npz",
        "shard-alpha-11-1700000004000-000003.npz", "shard-beta-host-7-1700000001000-000001.npz",
        "shard-beta-host-7-1700000003000-000002.npz", "shard-beta-host-7-1700000005000-000003.npz",
    ]  # fmt: skip
    _renamed(paths, names)
    watcher = ShardWatcher(tmp_path, SHAPE)
    taken = [shard.path.name for _ in range(6) for shard in watcher.poll(limit=1)]
    assert taken == [names[0], names[3], names[1], names[4], names[2], names[5]]


def test_intake_order_keys() -> None:
    from agent.learn.shard_watcher import intake_key

    assert intake_key("shard-my-host.lan-42-1700000000123-000007.npz") == (
        1700000000123, "my-host.lan", 42, 7,
    )  # fmt: skip
    # A name Charles did not make goes first, by name: never starved behind newer shards.
    assert intake_key("shard-imported.npz") == (-1, "shard-imported.npz", 0, 0)
    assert intake_key("shard--1-2-3.npz")[0] == -1  # no host
    assert intake_key("shard-h-1-x-3.npz")[0] == -1
    same_time = sorted(
        ["shard-b-1-5-000002.npz", "shard-a-9-5-000001.npz", "shard-a-2-5-000003.npz"],
        key=intake_key,
    )
    assert same_time == ["shard-a-2-5-000003.npz", "shard-a-9-5-000001.npz",
                         "shard-b-1-5-000002.npz"]  # fmt: skip


def _age_folder(folder: Path) -> None:
    """The folder last changed a minute ago: a listing now is not 'soon after a change'."""
    old = time.time() - 60
    os.utime(folder, (old, old))


def test_an_unchanged_folder_is_not_listed_again_until_the_relist_interval(
    tmp_path: Path,
) -> None:
    from agent.learn.shard_watcher import RELIST_SECONDS
    from tests.helpers.clock import FakeClock

    paths = _write(tmp_path, range(10), per_shard=5)
    _age_folder(tmp_path)
    clock = FakeClock()
    watcher = ShardWatcher(tmp_path, SHAPE, clock=clock)
    assert [s.path for s in watcher.poll()] == paths
    assert watcher.listings == 1
    for _ in range(5):
        assert watcher.poll() == []
    assert watcher.listings == 1  # nothing changed: a stat, no listing
    clock.advance(RELIST_SECONDS - 0.01)
    watcher.poll()
    assert watcher.listings == 1
    clock.advance(0.01)
    watcher.poll()
    assert watcher.listings == 2  # listed anyway, in case the folder's time was not updated
    later = _write(tmp_path, range(10, 15), per_shard=5)
    assert [s.path for s in watcher.poll()] == [p for p in later if p not in paths]
    assert watcher.listings == 3  # the folder changed: listed at once


def test_a_folder_listed_soon_after_a_change_is_listed_again(tmp_path: Path) -> None:
    """A second shard written within the same timestamp tick leaves the folder's time as it
    was (coarse timestamps); the watcher does not trust an unchanged time just after a change."""
    from tests.helpers.clock import FakeClock

    _write(tmp_path, range(5), per_shard=5)
    watcher = ShardWatcher(tmp_path, SHAPE, clock=FakeClock())
    assert len(watcher.poll()) == 1
    stamp = os.stat(tmp_path).st_mtime_ns
    more = _write(tmp_path, range(5, 10), per_shard=5)
    os.utime(tmp_path, ns=(stamp, stamp))  # as a filesystem with coarse timestamps leaves it
    assert [s.path.name for s in watcher.poll()] == [more[-1].name]
    assert watcher.listings == 2


def test_a_backlog_is_not_listed_on_every_poll(tmp_path: Path) -> None:
    from agent.learn.shard_watcher import BACKLOG_RELIST_SECONDS
    from tests.helpers.clock import FakeClock

    _write(tmp_path, range(50), per_shard=5)
    clock = FakeClock()
    watcher = ShardWatcher(tmp_path, SHAPE, clock=clock)
    for _ in range(5):
        assert len(watcher.poll(limit=1)) == 1
        _write(tmp_path, range(1), per_shard=1)  # a collector keeps writing meanwhile
    assert watcher.listings == 1
    clock.advance(BACKLOG_RELIST_SECONDS)
    assert len(watcher.poll(limit=1)) == 1
    assert watcher.listings == 2
