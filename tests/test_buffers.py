"""Training buffers: draws without replacement, max_uses, FIFO, readiness and the disk copy."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.learn.buffers import SLOT_NAMES, BufferSet, SampleBuffer
from agent.nets.registry import OUTPUT_NAMES

SHAPE = (4, 6, 3)


def _samples(ids: list[int] | range) -> tuple[np.ndarray, np.ndarray]:
    """Frames and labels that both carry the sample's id (frame bytes 0-1, labels id/10000)."""
    ids = np.asarray(list(ids), dtype=np.int64)
    frames = np.zeros((len(ids), *SHAPE), dtype=np.uint8)
    frames[:, 0, 0, 0], frames[:, 0, 0, 1] = ids % 256, ids // 256
    frames[:, 1:] = (ids % 251)[:, None, None, None].astype(np.uint8)
    labels = np.stack([ids / 10_000, -ids / 10_000], axis=1).astype(np.float32)
    return frames, labels


def _ids(frames: np.ndarray, labels: np.ndarray) -> list[int]:
    """The ids of drawn samples, checking that each frame still travels with its labels."""
    ids = frames[:, 0, 0, 0].astype(np.int64) + 256 * frames[:, 0, 0, 1].astype(np.int64)
    assert np.array_equal(np.rint(labels[:, 0] * 10_000).astype(np.int64), ids)
    assert np.array_equal(frames[:, 1, 0, 0], (ids % 251).astype(np.uint8))
    return ids.tolist()


def _drain(buffer: SampleBuffer, per_draw: int) -> list[int]:
    """Draw until the buffer is empty; every id drawn, in order."""
    drawn: list[int] = []
    while len(buffer):
        batch = _ids(*buffer.draw(min(per_draw, len(buffer))))
        assert len(set(batch)) == len(batch)  # a batch never repeats a sample
        drawn.extend(batch)
    return drawn


def _buffer(capacity: int = 50, max_uses: int = 1, seed: int = 0) -> SampleBuffer:
    return SampleBuffer("steering", capacity, SHAPE, max_uses, np.random.default_rng(seed))


# --- one buffer ------------------------------------------------------------------------------


def test_draws_are_without_replacement_and_remove_samples() -> None:
    buffer = _buffer()
    assert buffer.add(*_samples(range(50))) == 50
    assert (len(buffer), buffer.fill) == (50, 1.0)
    frames, labels = buffer.draw(7)
    assert frames.shape == (7, *SHAPE) and frames.dtype == np.uint8
    assert labels.shape == (7, 2) and labels.dtype == np.float32
    first = _ids(frames, labels)
    assert len(buffer) == 43
    rest = _drain(buffer, 7)
    assert sorted(first + rest) == list(range(50))  # every sample exactly once
    assert (buffer.drawn_total, buffer.removed_total) == (50, 50)
    with pytest.raises(ValueError):
        buffer.draw(1)


def test_drawn_samples_are_copies() -> None:
    buffer = _buffer(max_uses=2)
    buffer.add(*_samples(range(10)))
    frames, labels = buffer.draw(5)
    first = _ids(frames, labels)
    frames[:] = 255  # scribbling on a batch must not touch what the buffer holds
    labels[:] = 1.0
    counts = Counter(first + _drain(buffer, 5))  # _ids checks every frame against its labels
    assert counts == dict.fromkeys(range(10), 2)


def test_max_uses_draws_each_sample_that_often_then_removes_it() -> None:
    buffer = _buffer(capacity=20, max_uses=3)
    buffer.add(*_samples(range(20)))
    counts: Counter[int] = Counter()
    removed_after: dict[int, int] = {}
    while len(buffer):
        before = len(buffer)
        batch = _ids(*buffer.draw(min(6, len(buffer))))
        assert len(set(batch)) == len(batch)
        counts.update(batch)
        done = [i for i in batch if counts[i] == 3]
        assert len(buffer) == before - len(done)  # exactly the third draws leave
        for i in done:
            removed_after[i] = counts[i]
    assert counts == {i: 3 for i in range(20)}
    assert removed_after == {i: 3 for i in range(20)}
    assert (buffer.drawn_total, buffer.removed_total) == (60, 20)


def test_a_full_buffer_replaces_its_oldest_samples() -> None:
    buffer = _buffer(capacity=50, max_uses=1)
    buffer.add(*_samples(range(50)))
    assert buffer.add(*_samples(range(50, 55))) == 5
    assert buffer.add(*_samples(range(55, 60))) == 5
    assert len(buffer) == 50 and buffer.replaced_total == 10
    # Draws move samples around (swap with last); the arrival order must move with them.
    drawn = _ids(*buffer.draw(20))
    present = set(range(10, 60)) - set(drawn)
    buffer.add(*_samples(range(100, 140)))  # 20 free slots, then the 20 oldest go
    oldest = sorted(present)[:20]
    expected = (present - set(oldest)) | set(range(100, 140))
    assert sorted(_drain(buffer, 50)) == sorted(expected)


def test_adding_more_than_capacity_keeps_the_newest() -> None:
    buffer = _buffer(capacity=10)
    buffer.add(*_samples(range(3)))
    assert buffer.add(*_samples(range(100, 125))) == 10
    assert sorted(_drain(buffer, 10)) == list(range(115, 125))


def test_add_checks_its_input() -> None:
    buffer = _buffer()
    frames, labels = _samples(range(3))
    with pytest.raises(ValueError):
        buffer.add(frames.astype(np.float32), labels)
    with pytest.raises(ValueError):
        buffer.add(frames[:, :, :5], labels)
    with pytest.raises(ValueError):
        buffer.add(frames, labels[:2])
    labels[1, 0] = np.nan
    with pytest.raises(ValueError):
        buffer.add(frames, labels)
    assert len(buffer) == 0 and buffer.add(frames[:0], labels[:0]) == 0


def test_draws_are_uniform_over_the_buffer() -> None:
    buffer = _buffer(capacity=50, max_uses=10_000, seed=123)
    buffer.add(*_samples(range(50)))
    counts: Counter[int] = Counter()
    for _ in range(2_000):
        counts.update(_ids(*buffer.draw(10)))
    assert len(buffer) == 50  # nothing reached max_uses
    assert set(counts) == set(range(50))
    expected = 2_000 * 10 / 50  # 400 draws each
    assert max(counts.values()) < 1.2 * expected and min(counts.values()) > 0.8 * expected
    # Chi-square with 49 degrees of freedom: about 49 for a fair draw, 85 at p = 0.001.
    chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
    assert chi2 < 85


# --- a buffer per output ---------------------------------------------------------------------


def _sets(n: int, throttle: bool, steering: bool) -> np.ndarray:
    sets = np.zeros((n, 2), dtype=bool)
    sets[:, OUTPUT_NAMES.index("throttle")] = throttle
    sets[:, OUTPUT_NAMES.index("steering")] = steering
    return sets


def _buffer_set(capacity: int = 100, max_uses: int = 1, seed: int = 0) -> BufferSet:
    return BufferSet(capacity, SHAPE, max_uses=max_uses, rng=np.random.default_rng(seed))


def test_training_starts_when_every_buffer_is_ninety_percent_full() -> None:
    buffers = _buffer_set(capacity=100)
    assert not buffers.ready
    buffers.add_shard(*_samples(range(89)), _sets(89, True, True))
    assert buffers.fills == {name: 0.89 for name in OUTPUT_NAMES}
    assert not buffers.ready
    with pytest.raises(RuntimeError, match="not ready"):
        buffers.draw_batch(4)
    buffers.add_shard(*_samples([89]), _sets(1, True, False))  # one buffer at 90% is not enough
    assert not buffers.ready
    buffers.add_shard(*_samples([90]), _sets(1, False, True))
    assert buffers.ready
    buffers.draw_batch(1)  # 89% again
    assert not buffers.ready


def test_start_fill_is_exact_for_round_numbers() -> None:
    assert BufferSet(25_000, SHAPE, start_fill=0.9).start_count == 22_500
    assert BufferSet(10, SHAPE, start_fill=0.01).start_count == 1
    assert BufferSet(50, SHAPE, start_fill=1.0).start_count == 50
    with pytest.raises(ValueError):
        BufferSet(50, SHAPE, start_fill=0.0)


def test_add_shard_routes_samples_by_their_sets() -> None:
    buffers = _buffer_set(capacity=50)
    frames, labels = _samples(range(30))
    sets = np.zeros((30, 2), dtype=bool)
    sets[:10] = _sets(10, True, False)
    sets[10:20] = _sets(10, False, True)
    sets[20:25] = _sets(5, True, True)  # the last five join neither set
    buffers.add_shard(frames, labels, sets)
    throttle, steering = buffers.buffers["throttle"], buffers.buffers["steering"]
    assert sorted(_drain(throttle, 50)) == [*range(10), *range(20, 25)]
    assert sorted(_drain(steering, 50)) == list(range(10, 25))
    with pytest.raises(ValueError):
        buffers.add_shard(frames, labels, sets[:, :1])


def test_a_batch_draws_equally_from_every_buffer() -> None:
    buffers = _buffer_set(capacity=50)
    buffers.add_shard(*_samples(range(50)), _sets(50, True, False))
    buffers.add_shard(*_samples(range(1000, 1050)), _sets(50, False, True))
    frames, labels = buffers.draw_batch(8)
    ids = _ids(frames, labels)
    assert len(ids) == 16 and len(set(ids)) == 16
    parts = {name: ids[8 * i : 8 * (i + 1)] for i, name in enumerate(OUTPUT_NAMES)}
    assert all(i < 50 for i in parts["throttle"])  # OUTPUT_NAMES order, 8 from each
    assert all(i >= 1000 for i in parts["steering"])
    assert {name: len(b) for name, b in buffers.buffers.items()} == {"throttle": 42, "steering": 42}


def test_a_refused_batch_costs_no_samples() -> None:
    buffers = BufferSet(10, SHAPE, start_fill=0.1, rng=np.random.default_rng(1))
    buffers.add_shard(*_samples(range(10)), _sets(10, True, False))
    buffers.add_shard(*_samples(range(20, 23)), _sets(3, False, True))
    assert buffers.ready
    with pytest.raises(ValueError):
        buffers.draw_batch(5)  # steering holds only 3
    assert len(buffers.buffers["throttle"]) == 10


# --- the on-disk copy ------------------------------------------------------------------------


def _each(ids: list[int] | range) -> dict[str, list[int]]:
    """The same sorted ids for every output, as `_contents` returns them."""
    return {name: sorted(ids) for name in OUTPUT_NAMES}


def _contents(buffers: BufferSet) -> dict[str, list[int]]:
    """Every buffer's ids (drains the buffers)."""
    return {name: sorted(_drain(b, 100)) for name, b in buffers.buffers.items()}


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    buffers = _buffer_set(capacity=50, max_uses=3)
    buffers.add_shard(*_samples(range(40)), _sets(40, True, False))
    buffers.add_shard(*_samples(range(100, 130)), _sets(30, False, True))
    once = _ids(*buffers.buffers["steering"].draw(5))  # one use each: two left
    path = buffers.save(tmp_path)
    assert path == tmp_path / SLOT_NAMES[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SLOT_NAMES[0]]  # no temp files left

    restored = _buffer_set(capacity=50, max_uses=3, seed=9)
    assert restored.load(tmp_path)
    assert {name: len(b) for name, b in restored.buffers.items()} == {
        name: len(b) for name, b in buffers.buffers.items()
    }
    # Uses survive the restart: the samples drawn once before saving have two draws left.
    counts: Counter[int] = Counter()
    steering_back = restored.buffers["steering"]
    while len(steering_back):
        counts.update(_ids(*steering_back.draw(min(7, len(steering_back)))))
    assert {i: counts[i] for i in once} == dict.fromkeys(once, 2)
    assert all(counts[i] == 3 for i in range(100, 130) if i not in once)
    assert Counter(_drain(restored.buffers["throttle"], 100)) == dict.fromkeys(range(40), 3)


def test_saves_rotate_between_two_slots_and_the_newest_loads(tmp_path: Path) -> None:
    buffers = _buffer_set(capacity=20)
    buffers.add_shard(*_samples(range(10)), _sets(10, True, True))
    first = buffers.save(tmp_path)
    buffers.add_shard(*_samples(range(10, 15)), _sets(5, True, True))
    second = buffers.save(tmp_path)
    assert {first.name, second.name} == set(SLOT_NAMES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SLOT_NAMES)

    fresh = _buffer_set(capacity=20)
    assert fresh.load(tmp_path)
    assert _contents(fresh) == _each(range(15))

    buffers.add_shard(*_samples(range(15, 17)), _sets(2, True, True))
    third = buffers.save(tmp_path)  # overwrites the older slot, the first
    assert third == first
    counters = [_meta(tmp_path / slot)["saves"] for slot in SLOT_NAMES]
    assert counters == [3, 2]

    restarted = _buffer_set(capacity=20)  # a new process continues the counter from the files
    restarted.add_shard(*_samples(range(50, 52)), _sets(2, True, True))
    assert restarted.save(tmp_path) == second
    assert _meta(second)["saves"] == 4
    latest = _buffer_set(capacity=20)
    assert latest.load(tmp_path)
    assert _contents(latest) == _each([50, 51])


def _meta(path: Path) -> dict[str, object]:
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["meta"][()]))


def test_meta_describes_the_copy(tmp_path: Path) -> None:
    buffers = BufferSet(30, SHAPE, max_uses=2, rng=np.random.default_rng(0))
    meta = _meta(buffers.save(tmp_path))
    assert meta["format"] == "charles-buffers" and meta["version"] == 1
    assert meta["input_shape"] == list(SHAPE)
    assert (meta["capacity"], meta["max_uses"], meta["saves"]) == (30, 2, 1)
    assert isinstance(meta["time"], float)


@pytest.mark.parametrize("damage", ["truncate", "noise", "meta"])
def test_a_damaged_newest_copy_falls_back_to_the_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    buffers = _buffer_set(capacity=20)
    buffers.add_shard(*_samples(range(5)), _sets(5, True, True))
    older = buffers.save(tmp_path)
    buffers.add_shard(*_samples(range(5, 8)), _sets(3, True, True))
    newest = buffers.save(tmp_path)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) - 200])
    elif damage == "noise":
        newest.write_bytes(np.random.default_rng(0).bytes(len(data)))
    else:  # sound zip, wrong arrays
        np.savez(newest, meta=np.array(json.dumps({**_meta(older), "saves": 99})))
    fresh = _buffer_set(capacity=20)
    with caplog.at_level(logging.WARNING, logger="agent.learn.buffers"):
        assert fresh.load(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and newest.name in warnings[0] and "other copy" in warnings[0]
    assert _contents(fresh) == _each(range(5))


def test_nothing_to_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert not _buffer_set().load(tmp_path / "missing")
    (tmp_path / SLOT_NAMES[0]).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="agent.learn.buffers"):
        assert not _buffer_set().load(tmp_path)
    assert len(caplog.records) == 1


def test_a_copy_for_another_input_shape_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = BufferSet(10, (8, 8, 3), rng=np.random.default_rng(0))
    frames = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    other.add_shard(frames, np.zeros((4, 2), dtype=np.float32), _sets(4, True, True))
    other.save(tmp_path)
    buffers = _buffer_set()
    with caplog.at_level(logging.WARNING, logger="agent.learn.buffers"):
        assert not buffers.load(tmp_path)
    assert len(caplog.records) == 1 and "shape" in caplog.records[0].getMessage()
    assert buffers.fills == dict.fromkeys(OUTPUT_NAMES, 0.0)


def test_loading_into_smaller_buffers_keeps_the_newest(tmp_path: Path) -> None:
    big = _buffer_set(capacity=50)
    big.add_shard(*_samples(range(40)), _sets(40, True, True))
    big.save(tmp_path)
    small = _buffer_set(capacity=10)
    assert small.load(tmp_path)
    assert _contents(small) == _each(range(30, 40))
    # FIFO order survives the copy: the next arrivals replace the oldest loaded ones.
    again = _buffer_set(capacity=10)
    again.load(tmp_path)
    again.add_shard(*_samples(range(100, 103)), _sets(3, True, True))
    assert _contents(again) == _each([*range(33, 40), 100, 101, 102])


def test_a_copy_streams_into_the_buffers_in_small_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames are streamed a few rows at a time into the buffers (here 2 rows of 72 bytes a
    piece), keeping exactly the newest samples, each with its own labels."""
    from agent.learn import npz_reader

    big = _buffer_set(capacity=30, max_uses=2)
    big.add_shard(*_samples(range(25)), _sets(25, True, True))
    _ids(*big.buffers["steering"].draw(4))  # used once: still in the copy
    big.save(tmp_path)
    monkeypatch.setattr(npz_reader, "_CHUNK_BYTES", 150)
    small = _buffer_set(capacity=9, max_uses=2)
    assert small.load(tmp_path)
    assert Counter(_drain(small.buffers["throttle"], 100)) == dict.fromkeys(range(16, 25), 2)
    assert set(_drain(small.buffers["steering"], 100)) == set(range(16, 25))


def test_a_copy_damaged_in_its_last_frames_leaves_every_buffer_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The damage shows only at the end of the last buffer's frames (their CRC), after the
    first buffer was filled: nothing of the copy may stay."""
    import struct
    import zipfile

    buffers = _buffer_set(capacity=100)  # frames of 7,200 bytes: more than one read
    buffers.add_shard(*_samples(range(100)), _sets(100, True, True))
    path = buffers.save(tmp_path)
    last = f"{OUTPUT_NAMES[-1]}_frames.npy"
    with zipfile.ZipFile(path) as archive:
        entry = archive.getinfo(last)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<2H", data, entry.header_offset + 26)
    start = entry.header_offset + 30 + name_length + extra_length
    data[start + entry.file_size - 1] ^= 0xFF  # the last byte of the last frame
    path.write_bytes(bytes(data))
    fresh = _buffer_set(capacity=100)
    with caplog.at_level(logging.WARNING, logger="agent.learn.buffers"):
        assert not fresh.load(tmp_path)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "is damaged (Bad CRC" in warning and "starting empty" in warning
    assert fresh.fills == dict.fromkeys(OUTPUT_NAMES, 0.0)
