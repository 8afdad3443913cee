"""The ONNX Runtime backend: real exports (Keras -> tf2onnx), real ONNX Runtime sessions, real
TensorFlow to compare with, a real model store on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import agent.inference.onnx_backend as onnx_backend
from agent.checkpoints.publish import publish
from agent.checkpoints.resolve import checkpoint_in
from agent.config import InferenceConfig, SwapConfig
from agent.drive.hotswap import HotSwap
from agent.errors import ModelError
from agent.inference.onnx_backend import TOLERANCE
from agent.inference.predictor import Predictor, build_model
from agent.nets.registry import get_line
from tests.helpers.charles import REPO, assert_one_line_error
from tests.helpers.checkpoints import LINE, publish_driver

ONNX = InferenceConfig(backend="onnxruntime")
MODEL_0005 = "model_0005_inceptionresnetv2"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The private ONNX cache, in this test's temporary folder (never the real home)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "charles" / "onnx"


def frames(line: str, count: int = 6, seed: int = 0) -> np.ndarray:
    shape = get_line(line).input_shape
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)


def largest_difference(a: Predictor, b: Predictor, pictures: np.ndarray) -> float:
    """Largest difference of throttle, steering and (when both have it) the Convcam map."""
    worst = 0.0
    for picture in pictures:
        x, y = a.predict(picture), b.predict(picture)
        worst = max(worst, abs(x.throttle - y.throttle), abs(x.steering - y.steering))
        if x.convcam is not None and y.convcam is not None:
            scale = max(1.0, float(np.abs(y.convcam).max()))
            worst = max(worst, float(np.abs(x.convcam - y.convcam).max()) / scale)
    return worst


def trained_checkpoint(store: Path) -> Path:
    """A checkpoint whose outputs depend on the picture (fresh weights, published)."""
    line = get_line(LINE)
    model = line.build("none")
    return publish(model, store, LINE, batches=7, note="fresh").folder


def test_onnx_agrees_with_tensorflow_on_pilotnet_and_is_cached_privately(
    tmp_path: Path, cache: Path
) -> None:
    checkpoint = checkpoint_in(trained_checkpoint(tmp_path), LINE)
    tensorflow = Predictor.load(LINE, checkpoint, convcam=True)
    onnx = Predictor.load(LINE, checkpoint, convcam=True, inference=ONNX)
    assert tensorflow.onnx is None and onnx.onnx is not None
    assert onnx.onnx.export_seconds > 0  # exported this time
    cached = onnx.onnx.path
    assert cached is not None and cached.parent == cache
    assert largest_difference(onnx, tensorflow, frames(LINE)) <= TOLERANCE
    # The second load reads the cache (no export), and it is checked the same way.
    again = Predictor.load(LINE, checkpoint, convcam=True, inference=ONNX)
    assert again.onnx is not None and again.onnx.export_seconds == 0 and again.onnx.path == cached
    assert largest_difference(again, tensorflow, frames(LINE, seed=1)) <= TOLERANCE
    # Without the Convcam output it is another graph, cached under another name.
    plain = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert plain.onnx is not None and plain.onnx.path != cached
    assert plain.predict(frames(LINE)[0]).convcam is None


def test_onnx_agrees_with_tensorflow_on_model_0005() -> None:
    line = get_line(MODEL_0005)
    model = line.build("none")
    tensorflow = Predictor(model, line, "tf", warmup_runs=1)
    onnx = Predictor(model, line, "onnx", warmup_runs=1, inference=ONNX)
    assert onnx.onnx is not None and onnx.onnx.path is None  # fresh weights: nothing cached
    difference = largest_difference(onnx, tensorflow, frames(MODEL_0005, count=3))
    assert difference <= TOLERANCE, difference


def test_a_signed_cache_file_that_disagrees_is_exported_again(tmp_path: Path) -> None:
    """Behind the signature, the check against TensorFlow still catches a graph that does not
    reproduce it (an exporter bug, another checkpoint's graph filed under this one's key)."""
    checkpoint = checkpoint_in(publish_driver(tmp_path, 0.5, -0.25), LINE)
    first = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert first.onnx is not None and first.onnx.path is not None
    other = Predictor.load(LINE, checkpoint_in(publish_driver(tmp_path, -0.9, 0.9), LINE),
                           inference=ONNX)  # fmt: skip
    assert other.onnx is not None and other.onnx.path is not None
    # Predictions go through the ONNX session, not TensorFlow: given the other graph's session,
    # the first predictor says what the other checkpoint says.
    first.onnx.session = other.onnx.session
    swapped = first.predict(frames(LINE)[0])
    assert (round(swapped.throttle, 4), round(swapped.steering, 4)) == (-0.9, 0.9)
    key = onnx_backend.export_key(first.model, LINE)
    for wrong in (other.onnx.path.read_bytes()[onnx_backend.HEADER_BYTES :], b"not an onnx graph"):
        with onnx_backend.private_cache() as cache:
            assert cache is not None and cache.put(key, wrong) == first.onnx.path
        fixed = Predictor.load(LINE, checkpoint, inference=ONNX)
        assert fixed.onnx is not None and fixed.onnx.export_seconds > 0
        prediction = fixed.predict(frames(LINE)[0])
        assert (round(prediction.throttle, 4), round(prediction.steering, 4)) == (0.5, -0.25)


def test_a_linked_cache_file_is_replaced_never_written_through(tmp_path: Path) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    checkpoint = checkpoint_in(publish_driver(store, 0.5, -0.25), LINE)
    first = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert first.onnx is not None and first.onnx.path is not None
    cached = first.onnx.path
    # Even to a soundly signed export: a link is never followed, nor written through.
    target = elsewhere / "victim.onnx"
    elsewhere.mkdir()
    target.write_bytes(signed := cached.read_bytes())
    cached.unlink()
    cached.symlink_to(target)
    again = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert again.onnx is not None and again.onnx.export_seconds > 0
    assert target.read_bytes() == signed
    assert not cached.is_symlink()  # replaced by the real file, the link's target untouched


def test_a_shipped_checkpoint_is_cached_in_the_user_cache(cache: Path) -> None:
    from agent.checkpoints.reference import reference_checkpoint

    checkpoint = reference_checkpoint(LINE)
    assert checkpoint is not None
    predictor = Predictor.load(LINE, checkpoint, inference=ONNX)
    assert predictor.onnx is not None and predictor.onnx.path is not None
    assert predictor.onnx.path.parent == cache
    assert not (checkpoint.folder / "onnx").exists()


def test_a_graph_that_cannot_match_tensorflow_is_a_model_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When even a fresh export disagrees, the checkpoint may not drive on ONNX Runtime."""
    monkeypatch.setattr(onnx_backend, "TOLERANCE", 0.0)
    # Fresh weights: float32 sums come out a few ulps apart on the two runtimes.
    model = get_line(LINE).build("none")
    with pytest.raises(ModelError, match="differ from TensorFlow's"):
        Predictor(model, get_line(LINE), "strict", inference=ONNX)


def test_the_hot_swap_exports_each_new_checkpoint_in_the_loader(tmp_path: Path) -> None:
    line = get_line(LINE)
    driving = Predictor.load(LINE, checkpoint_in(publish_driver(tmp_path, 0.3, 0.0), LINE),
                             inference=ONNX)  # fmt: skip
    shadow = Predictor(build_model(line, "none", ONNX), line, "shadow", inference=ONNX,
                       weights_ready=False)  # fmt: skip
    assert shadow.onnx is None  # nothing exported for placeholder weights
    config = SwapConfig(policy="immediate", poll_seconds=0.05, nice=0)
    swap = HotSwap(tmp_path, driving, shadow, 1, config)
    publish_driver(tmp_path, 0.5, -0.25)
    swap._poll_once()
    assert shadow.onnx is not None  # exported and checked by the loader, before any offer
    picture = frames(LINE)[0]
    now_driving, prediction = swap.predict(driving, picture, 1.0)
    assert now_driving is shadow
    assert (round(prediction.throttle, 4), round(prediction.steering, 4)) == (0.5, -0.25)


def test_the_backend_is_chosen_in_config(run_charles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    results = {}
    for backend in ("tensorflow", "onnxruntime"):
        result = run_charles(
            "bench", "model", "--config", str(REPO / "config.toml"), "--seconds", "1", "--json",
            "--checkpoint", "none",
            "--set", f"inference.backend={backend}", "--set", "inference.intra_op_threads=1",
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        results[backend] = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["tensorflow"]["backend"] == "tensorflow"
    assert results["onnxruntime"]["backend"] == "onnxruntime"
    assert results["onnxruntime"]["predictions"] > 0


def test_missing_onnxruntime_is_one_line_naming_the_install_command(
    run_charles, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """As on a machine without the package: `import onnxruntime` fails."""
    shim = tmp_path / "shim" / "onnxruntime"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shim.parent), str(REPO)])}
    config = str(REPO / "config.toml")
    for command in (["drive", "--seconds", "1"], ["bench", "model", "--seconds", "1"]):
        result = run_charles(
            *command, "--config", config, "--set", "inference.backend=onnxruntime",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        line = assert_one_line_error(result, "ONNX Runtime is not installed")
        assert "pip install 'charles[onnx]'" in line
