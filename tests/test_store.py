"""The model store: publish, find, verify and load checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ModelError
from agent.nets.registry import get_line
from agent.predictor import Predictor
from agent.store import MANIFEST_FILE, WEIGHTS_FILE, latest, load_into, publish, resolve, versions
from tests.conftest import assert_one_line_error

LINE = "pilotnet_small"


def test_publish_then_load_gives_the_same_predictions(tmp_path: Path) -> None:
    trained = get_line(LINE).build("none")
    first = publish(trained, tmp_path, LINE, batches=100)
    second = publish(trained, tmp_path, LINE, batches=200, note="more")
    assert [c.manifest.version for c in versions(tmp_path, LINE)] == ["v0001", "v0002"]
    assert latest(tmp_path, LINE) == second
    manifest = json.loads((second.folder / MANIFEST_FILE).read_text())
    assert manifest["model_line"] == LINE and manifest["batches"] == 200
    assert first.name == "pilotnet_small/v0001 (100 batches)"

    frame = np.random.default_rng(3).integers(0, 256, size=(90, 160, 3), dtype=np.uint8)
    loaded = Predictor.load(LINE, resolve(tmp_path, LINE, "latest"))
    expected = [float(o[0, 0]) for o in trained(frame[np.newaxis], training=False)]
    got = loaded.predict(frame)
    assert [got.throttle, got.steering] == pytest.approx(expected, abs=1e-6)
    assert "v0002" in loaded.name


def test_resolve_settings(tmp_path: Path) -> None:
    assert resolve(tmp_path, LINE, "latest") is None  # empty store: fresh weights
    assert resolve(tmp_path, LINE, "none") is None
    checkpoint = publish(get_line(LINE).build("none"), tmp_path, LINE, batches=0)
    assert resolve(tmp_path, LINE, "v0001") == checkpoint
    assert resolve(tmp_path, LINE, str(checkpoint.weights)) == checkpoint
    with pytest.raises(ModelError, match=r"no version v0009 .* \(have: v0001\)"):
        resolve(tmp_path, LINE, "v0009")
    with pytest.raises(ModelError, match='not "latest"'):
        resolve(tmp_path, LINE, str(tmp_path / "elsewhere"))


def test_a_damaged_or_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    model = get_line(LINE).build("none")
    checkpoint = publish(model, tmp_path, LINE, batches=1)
    with pytest.raises(ModelError, match="is for model line pilotnet_small, not model_0005"):
        load_into(model, checkpoint, "model_0005_inceptionresnetv2")
    weights = checkpoint.folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelError, match="does not match its manifest's SHA-256"):
        load_into(model, checkpoint, LINE)
    (checkpoint.folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        resolve(tmp_path, LINE, "v0001")


def test_bad_checkpoint_on_the_command_line_is_one_line(tmp_path: Path, run_charles) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes(b"junk")
    result = run_charles(
        "model", "bench", "--model", LINE, "--checkpoint", str(folder), "--seconds", "0.1"
    )
    assert_one_line_error(result, str(folder), "manifest.json", "not a Charles checkpoint")
