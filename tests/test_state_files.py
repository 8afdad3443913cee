"""The trainer's state files as untrusted input: links, FIFOs, /dev/zero, bombs, odd content.

Each file the trainer reads at start (loaded-shards.txt, optimizer.npz, buffers-0.npz) is
planted in turn and read by the real `TrainerState` in a child process, whose own peak memory
is measured and which is killed if it hangs: a planted file must cost one warning, never a
hang or a large allocation. Writes replace what is at the name, never write through it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from agent.learn.buffers import BufferSet
from agent.learn.state import SHARDS_FILE, TrainerState
from tests.test_shards_hostile import Member, MiB, npy, npy_header, run_child, write_zip

SHAPE = (4, 6, 3)
BATCHES = 5
LINE = "line"


class StandInVariable:
    """What TrainerState uses of a Keras optimizer variable: path, shape, dtype, numpy, assign.

    The real Adam's variables need TensorFlow, whose own memory would drown the measurement;
    tests/test_trainer.py covers the real optimizer's round trip.
    """

    def __init__(self, path: str, value: np.ndarray) -> None:
        self.path = path
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self) -> str:
        return str(self.value.dtype)

    def numpy(self) -> np.ndarray:
        return self.value

    def assign(self, value: np.ndarray) -> None:
        self.value = np.array(value)


class StandInOptimizer:
    def __init__(self, fill: float = 0.0) -> None:
        self.variables = [
            StandInVariable("adam/iteration", np.array(BATCHES, np.int64)),
            StandInVariable("adam/dense_kernel_momentum", np.full((3, 2), fill, np.float32)),
        ]


_READ = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from agent.learn.buffers import BufferSet
from agent.learn.state import TrainerState
from tests.test_state_files import BATCHES, LINE, SHAPE, StandInOptimizer
state = TrainerState(Path(sys.argv[1]), LINE)
what = sys.argv[2]
_start_measuring()
if what == "loaded-shards.txt":
    print("names", len(state.loaded_shards()))
elif what == "optimizer.npz":
    print("restored", state.load_optimizer(StandInOptimizer(), BATCHES))
else:
    print("restored", state.load_buffers(BufferSet(10, SHAPE)))
"""
_NOTHING = {
    "loaded-shards.txt": "names 0",
    "optimizer.npz": "restored False",
    "buffers-0.npz": "restored False",
}


def _sound_files(folder: Path) -> None:
    """A sound copy of every state file in `folder` (what a trainer would leave)."""
    state = TrainerState(folder, LINE)
    buffers = BufferSet(10, SHAPE)
    buffers.add_shard(np.ones((4, *SHAPE), np.uint8), np.zeros((4, 2), np.float32), _sets(4))
    state.remember_shards(["shard-h-1-1700000000000-000000.npz"])
    state.save_buffers(buffers)
    state.save_optimizer(StandInOptimizer(fill=1.0), BATCHES)


def _sets(count: int) -> np.ndarray:
    return np.ones((count, 2), dtype=bool)


def _optimizer_bomb(path: Path) -> None:
    """The stand-in's own meta, but a first variable declaring 600 MB (a file under 1 MB)."""
    names = [v.path.split("/", 1)[-1] for v in StandInOptimizer().variables]
    meta = npy(np.array(json.dumps({"batches": BATCHES, "names": names})))
    header = npy_header((600 * MiB // 8,), np.int64)
    write_zip(
        path,
        [
            Member("meta.npy", meta),
            Member("v0.npy", header, 600 * MiB),
            Member("v1.npy", npy(np.zeros((3, 2), np.float32))),
        ],
    )


def _buffers_bomb(path: Path) -> None:
    """A copy of 4 million samples per buffer, stored: a sparse file of 736 MB that costs no
    disk, every array exactly what its header declares."""
    count = 4_000_000
    meta = {
        "format": "charles-buffers",
        "version": 1,
        "input_shape": list(SHAPE),
        "capacity": count,
        "max_uses": 1,
        "saves": 1,
        "time": 0.0,
    }
    members = [Member("meta.npy", npy(np.array(json.dumps(meta))), method=0)]
    columns = {
        "frames": ((count, *SHAPE), np.uint8),
        "labels": ((count, 2), np.float32),
        "uses": ((count,), np.int32),
        "order": ((count,), np.int64),
    }
    for output in ("throttle", "steering"):
        for key, (shape, dtype) in columns.items():
            zeros = int(np.prod(shape)) * np.dtype(dtype).itemsize
            header = npy_header(shape, dtype)
            members.append(Member(f"{output}_{key}.npy", header, zeros, method=0))
    write_zip(path, members)


def _plant(folder: Path, name: str, kind: str, elsewhere: Path) -> None:
    path = folder / name
    if kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to a sound copy":
        _sound_files(elsewhere)
        path.symlink_to(elsewhere / LINE / name)
    elif name == SHARDS_FILE:  # oversized: a sparse 100 MB (the limit is 64 MiB)
        with open(path, "wb") as stream:
            stream.truncate(100 * MiB)
    elif name == "optimizer.npz":
        _optimizer_bomb(path)
    else:
        _buffers_bomb(path)


@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo", "link to a sound copy", "bomb"])
@pytest.mark.parametrize("name", ["loaded-shards.txt", "optimizer.npz", "buffers-0.npz"])
def test_a_planted_state_file_costs_one_warning_never_a_hang_or_memory(
    tmp_path: Path, name: str, kind: str
) -> None:
    root = tmp_path / "training"
    folder = root / LINE
    folder.mkdir(parents=True)
    _plant(folder, name, kind, tmp_path / "elsewhere")

    child = run_child(_READ, str(root), name, timeout=30, address_space=2 << 30)

    assert child.returncode == 0, child.stderr[-2000:]  # -9: it hung and was killed
    assert child.stdout.strip() == _NOTHING[name], child.stderr[-2000:]
    warnings = [line for line in child.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, child.stderr[-2000:]
    assert str(folder / name) in warnings[0], warnings[0]
    assert child.peak_rss < 64 * MiB, child.peak_rss


def _state(tmp_path: Path) -> TrainerState:
    return TrainerState(tmp_path / "training", LINE)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"shard-a-1-1700000000000-000000.npz\n../../etc/passwd\n", "not a shard name"),
        (b"shard-a-1-1700000000000-000000.npz\n\xff\xfe\n", "not UTF-8"),
    ],
)
def test_an_odd_list_of_loaded_shards_is_ignored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, phrase: str
) -> None:
    state = _state(tmp_path)
    (state.folder / SHARDS_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="agent.learn.state"):
        assert state.loaded_shards() == set()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert phrase in warning and SHARDS_FILE in warning


def test_a_sound_list_of_loaded_shards_reads_back(tmp_path: Path) -> None:
    state = _state(tmp_path)
    names = {"shard-a-1-1700000000000-000000.npz", "shard-b-2-1700000000001-000007.npz"}
    state.remember_shards(names)
    state.save_buffers(BufferSet(10, SHAPE))
    assert _state(tmp_path).loaded_shards() == names


def test_the_optimizer_state_round_trips_and_a_mismatch_is_left_unused(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.save_optimizer(StandInOptimizer(fill=2.5), BATCHES)
    restored = StandInOptimizer()
    assert state.load_optimizer(restored, BATCHES)
    assert (restored.variables[1].value == 2.5).all()
    assert not state.load_optimizer(StandInOptimizer(), BATCHES + 1)  # saved at another batch


def test_a_buffer_copy_with_a_huge_meta_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffers = BufferSet(10, SHAPE)
    path = buffers.save(tmp_path)
    with np.load(path, allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    meta = json.loads(str(arrays["meta"][()]))
    arrays["meta"] = np.array(json.dumps({**meta, "padding": " " * 100_000}))
    np.savez(path, **arrays)
    with caplog.at_level(logging.WARNING, logger="agent.learn.buffers"):
        assert not BufferSet(10, SHAPE).load(tmp_path)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "meta is longer than" in warning


def test_a_buffer_copy_far_larger_than_the_buffers_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    big = BufferSet(50, SHAPE)
    big.add_shard(np.ones((50, *SHAPE), np.uint8), np.zeros((50, 2), np.float32), _sets(50))
    big.save(tmp_path)
    small = BufferSet(10, SHAPE)  # 50 samples a buffer is more than 4 x 10
    with caplog.at_level(logging.WARNING, logger="agent.learn.buffers"):
        assert not small.load(tmp_path)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "buffers-0.npz" in warning and "starting empty" in warning
    assert small.fills == {"throttle": 0.0, "steering": 0.0}


def test_state_files_replace_planted_links_instead_of_writing_through_them(
    tmp_path: Path,
) -> None:
    state = _state(tmp_path)
    victims = {}
    for name in ("loaded-shards.txt", "optimizer.npz", "buffers-0.npz", "buffers-1.npz"):
        victim = tmp_path / f"victim-{name}"
        victim.write_bytes(b"precious")
        (state.folder / name).symlink_to(victim)
        victims[name] = victim
    state.remember_shards(["shard-a-1-1700000000000-000000.npz"])
    buffers = BufferSet(10, SHAPE)
    state.save_buffers(buffers)
    state.save_buffers(buffers)  # both slots
    state.save_optimizer(StandInOptimizer(), BATCHES)
    for name, victim in victims.items():
        assert victim.read_bytes() == b"precious", name
        assert not (state.folder / name).is_symlink(), name
    assert _state(tmp_path).loaded_shards() == {"shard-a-1-1700000000000-000000.npz"}
