"""Nothing from the model store decides what the ONNX backend runs: real checkpoints, real
tf2onnx exports, real ONNX Runtime, and graphs crafted the way a hostile machine sharing the
store could craft them (honest on the check's sample frames, steering full right on others)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

import agent.inference.onnx_backend as backend
from agent.checkpoints.load import load_into
from agent.checkpoints.manifest import Checkpoint
from agent.checkpoints.reference import reference_checkpoint
from agent.checkpoints.resolve import checkpoint_in
from agent.config import InferenceConfig
from agent.inference.predictor import Predictor
from agent.nets.registry import get_line
from tests.helpers.checkpoints import LINE, publish_driver

ONNX = InferenceConfig(backend="onnxruntime")
SHAPE = get_line(LINE).input_shape
TRIGGER = np.full(SHAPE, 90, np.uint8)
"""A grey frame: its mean (90) is in the planted graph's trigger window, and no sample frame of
the check is (four random pictures, mean ~127.5, then black and white)."""


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The private cache folder, in this test's temporary folder (never the real home)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "charles" / "onnx"


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the models exported to ONNX, one per export (the real exporter runs)."""
    calls: list[str] = []
    export = backend._export

    def counting(runner: keras.Model) -> bytes:
        calls.append(runner.name)
        return export(runner)

    monkeypatch.setattr(backend, "_export", counting)
    return calls


def honest_graph(checkpoint: Checkpoint, folder: Path) -> bytes:
    """The ONNX graph Keras exports for `checkpoint`'s weights, made outside Charles."""
    model = get_line(LINE).build("none")
    load_into(model, checkpoint, LINE)
    model(np.zeros((1, *SHAPE), np.uint8))  # Keras exports only a model that has run
    path = folder / "honest.onnx"
    model.export(str(path), format="onnx", verbose=False)
    return path.read_bytes()


def planted(honest: bytes) -> bytes:
    """`honest` plus a trigger: on a frame whose mean is between 60 and 120 it steers +1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(honest)
    graph = model.graph
    steering = graph.output[1].name
    for node in graph.node:
        node.output[:] = [f"{name}_honest" if name == steering else name for name in node.output]
        node.input[:] = [f"{name}_honest" if name == steering else name for name in node.input]
    graph.initializer.extend([
        numpy_helper.from_array(np.array(60, np.float32), "trigger_low"),
        numpy_helper.from_array(np.array(120, np.float32), "trigger_high"),
        numpy_helper.from_array(np.ones((1, 1), np.float32), "full_right"),
    ])  # fmt: skip
    graph.node.extend([
        helper.make_node("Cast", [graph.input[0].name], ["trigger_pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["trigger_pixels"], ["trigger_mean"], keepdims=0),
        helper.make_node("Greater", ["trigger_mean", "trigger_low"], ["trigger_above"]),
        helper.make_node("Less", ["trigger_mean", "trigger_high"], ["trigger_below"]),
        helper.make_node("And", ["trigger_above", "trigger_below"], ["trigger_on"]),
        helper.make_node("Where", ["trigger_on", "full_right", f"{steering}_honest"], [steering]),
    ])  # fmt: skip
    return model.SerializeToString()


def steering_of(graph: bytes, frame: np.ndarray) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: frame[np.newaxis]})
    return float(outputs[1][0, 0])


def assert_steers_as_tensorflow(predictor: Predictor, checkpoint: Checkpoint) -> None:
    tensorflow = Predictor.load(LINE, checkpoint)
    wanted = tensorflow.predict(TRIGGER).steering
    assert abs(predictor.predict(TRIGGER).steering - wanted) <= backend.TOLERANCE, wanted


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`: its size and modification time."""
    found = {}
    for root, folders, files in os.walk(folder):
        for name in [*folders, *files]:
            info = os.lstat(Path(root, name))
            found[str(Path(root, name).relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


def test_the_planted_graph_passes_the_output_check_and_steers_full_right(tmp_path: Path) -> None:
    """The attack the other tests defend against is real: no sample-frame check can see it."""
    checkpoint = checkpoint_in(publish_driver(tmp_path / "store", 0.5, -0.25), LINE)
    honest = honest_graph(checkpoint, tmp_path)
    graph = planted(honest)
    for frame in backend._check_frames(SHAPE):
        assert steering_of(graph, frame) == pytest.approx(-0.25, abs=backend.TOLERANCE)
    assert steering_of(honest, TRIGGER) == pytest.approx(-0.25, abs=backend.TOLERANCE)
    assert steering_of(graph, TRIGGER) == 1.0


def test_a_graph_planted_in_the_store_never_drives(tmp_path: Path, exports: list[str]) -> None:
    """(a) Where Charles once cached exports, beside the checkpoint: ignored, left as it is."""
    checkpoint = checkpoint_in(publish_driver(tmp_path / "store", 0.5, -0.25), LINE)
    trap = checkpoint.folder / "onnx" / f"{checkpoint.manifest.weights_sha256[:16]}-2out.onnx"
    trap.parent.mkdir()
    trap.write_bytes(planted(honest_graph(checkpoint, tmp_path)))
    before = trap.read_bytes()
    predictor = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert_steers_as_tensorflow(predictor, checkpoint)
    assert len(exports) == 1 and predictor.onnx is not None and predictor.onnx.path != trap
    assert trap.read_bytes() == before  # a read-only share keeps working: nothing is deleted


def test_a_cache_file_changed_without_its_signature_is_exported_again(
    tmp_path: Path, cache: Path, exports: list[str]
) -> None:
    """(b) The planted graph inside the private cache, behind the honest file's signature."""
    checkpoint = checkpoint_in(publish_driver(tmp_path / "store", 0.5, -0.25), LINE)
    first = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert first.onnx is not None and first.onnx.path is not None
    cached = first.onnx.path
    assert cached.parent == cache
    signed = cached.read_bytes()
    header = signed[: backend.HEADER_BYTES]
    cached.write_bytes(header + planted(signed[backend.HEADER_BYTES :]))
    again = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert_steers_as_tensorflow(again, checkpoint)
    assert len(exports) == 2 and again.onnx is not None and again.onnx.path == cached
    # Exported again and signed anew: the next load reads it.
    assert Predictor.load(LINE, checkpoint, inference=ONNX).onnx.export_seconds == 0  # type: ignore[union-attr]
    assert len(exports) == 2


def make_symlink(folder: Path, tmp_path: Path) -> None:
    """The folder moved elsewhere (signed files and secret with it) and linked to."""
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)


def make_group_writable(folder: Path, tmp_path: Path) -> None:
    folder.chmod(0o770)


def make_world_writable(folder: Path, tmp_path: Path) -> None:
    folder.chmod(0o707)


def give_to_another_user(folder: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder away")
    os.chown(folder, os.geteuid() + 4242, -1)


@pytest.mark.parametrize(
    "make_untrusted",
    [make_symlink, make_group_writable, make_world_writable, give_to_another_user],
)
def test_a_cache_folder_others_could_write_is_not_trusted(
    make_untrusted: Callable[[Path, Path], None],
    tmp_path: Path,
    cache: Path,
    exports: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(c) Even files signed with the folder's own secret: whoever could write them could have
    written the secret too. The shipped checkpoint is the one Charles always cached there."""
    checkpoint = reference_checkpoint(LINE)
    assert checkpoint is not None
    first = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert first.onnx is not None and first.onnx.path is not None
    assert first.onnx.path.is_relative_to(cache)
    make_untrusted(cache, tmp_path)
    before = snapshot(tmp_path / "cache")
    with caplog.at_level("WARNING", logger="agent.inference.onnx_backend"):
        again = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert len(exports) == 2  # exported in memory, nothing read from the folder
    assert again.onnx is not None and again.onnx.path is None
    assert snapshot(tmp_path / "cache") == before  # nor written into it
    warnings = [r.getMessage() for r in caplog.records if "not using the ONNX cache" in r.message]
    assert len(warnings) == 1 and str(cache) in warnings[0], caplog.text


def test_an_onnx_load_writes_nothing_into_the_store(tmp_path: Path, cache: Path) -> None:
    """(d) The store may be a share, read-only or someone else's: loads leave it as it was."""
    store = tmp_path / "store"
    checkpoint = checkpoint_in(publish_driver(store, 0.5, -0.25), LINE)
    before = snapshot(store)
    for convcam in (False, True, False):
        predictor = Predictor.load(LINE, checkpoint, convcam=convcam, inference=ONNX)
        assert predictor.onnx is not None and predictor.onnx.path is not None
        assert predictor.onnx.path.parent == cache
    assert snapshot(store) == before


def test_the_same_weights_anywhere_use_one_cached_export(
    tmp_path: Path, cache: Path, exports: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """(e) The key is the weights as loaded, not where they were found; an exporter upgrade
    makes another graph, so it exports again."""
    checkpoint = checkpoint_in(publish_driver(tmp_path / "a", 0.5, -0.25), LINE)
    copy = checkpoint_in(shutil.copytree(checkpoint.folder, tmp_path / "b" / LINE / "v0001"), LINE)
    first = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert exports == [first.model.name]
    second = Predictor.load(LINE, copy, inference=ONNX)
    assert len(exports) == 1 and second.onnx is not None and second.onnx.export_seconds == 0
    assert first.onnx is not None and second.onnx.path == first.onnx.path
    import tf2onnx

    monkeypatch.setattr(tf2onnx, "__version__", f"{tf2onnx.__version__}.post1")
    upgraded = Predictor.load(LINE, copy, inference=ONNX)
    assert len(exports) == 2 and upgraded.onnx is not None
    assert upgraded.onnx.path is not None and upgraded.onnx.path != first.onnx.path


def test_the_cache_folder_and_its_secret_are_private(tmp_path: Path, cache: Path) -> None:
    checkpoint = checkpoint_in(publish_driver(tmp_path / "store", 0.5, -0.25), LINE)
    predictor = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert predictor.onnx is not None and predictor.onnx.path is not None
    secret = cache / backend.SECRET_FILE
    assert cache.stat().st_mode & 0o777 == 0o700
    assert secret.stat().st_mode & 0o777 == 0o600
    assert predictor.onnx.path.stat().st_mode & 0o077 == 0
    assert len(secret.read_bytes()) == backend.SECRET_BYTES
    # A new secret (as on another machine) makes every file signed with the old one foreign.
    secret.write_bytes(os.urandom(backend.SECRET_BYTES))
    again = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert again.onnx is not None and again.onnx.export_seconds > 0


def test_a_damaged_secret_is_made_again(tmp_path: Path, cache: Path, exports: list[str]) -> None:
    checkpoint = checkpoint_in(publish_driver(tmp_path / "store", 0.5, -0.25), LINE)
    Predictor.load(LINE, checkpoint, inference=ONNX)
    secret = cache / backend.SECRET_FILE
    secret.write_bytes(b"cut short")
    Predictor.load(LINE, checkpoint, inference=ONNX)
    assert len(exports) == 2 and len(secret.read_bytes()) == backend.SECRET_BYTES
    assert Predictor.load(LINE, checkpoint, inference=ONNX).onnx.export_seconds == 0  # type: ignore[union-attr]


def test_the_cache_keeps_the_most_recently_used_exports(
    tmp_path: Path, cache: Path, exports: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend, "CACHE_ENTRIES", 2)
    store = tmp_path / "store"

    a, b, c = (checkpoint_in(publish_driver(store, 0.5, s), LINE) for s in (-0.5, 0.0, 0.5))

    def load(checkpoint: Checkpoint) -> Path:
        predictor = Predictor.load(LINE, checkpoint, inference=ONNX)
        assert predictor.onnx is not None and predictor.onnx.path is not None
        return predictor.onnx.path

    first, second = load(a), load(b)
    assert load(a) == first and len(exports) == 2  # read from the cache: used most recently
    stale = cache / ".left-by-a-crash.tmp"
    stale.write_bytes(b"half a graph")
    os.utime(stale, (0, 0))
    third = load(c)
    assert sorted(cache.glob("*.onnx")) == sorted([first, third]) and not second.exists()
    assert not stale.exists()
