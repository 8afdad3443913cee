"""A damaged newest version never stops a start: "latest" falls back past it with one warning.

Every way a version can be damaged while its manifest still looks right (issue 17, item 15):
weights that are not finite, arrays of the wrong shape, missing or extra arrays, a file that is
not HDF5, and the checks the store always made (manifest, size, SHA-256). Each is met the way a
start meets it: `resolve.latest` (what `charles train` and `charles model list` ask),
`checkpoint_to_drive` (what `charles drive` asks) and a real `charles model list`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import agent.checkpoints.load
from agent.checkpoints.load import sha256_of
from agent.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE
from agent.checkpoints.publish import publish
from agent.checkpoints.reference import checkpoint_to_drive
from agent.checkpoints.resolve import latest
from agent.config import Config, ModelConfig
from agent.errors import ModelError
from agent.inference.predictor import Predictor
from tests.helpers.models import constant_driver

LINE = "pilotnet_small"
ARRAY = "layers/dense/vars/1"
"""The first Dense layer's bias in a pilotnet_small weights file, shape (100,)."""


def _set(name: str, values: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    def change(file: h5py.File) -> None:
        new = values(file[name][()])
        del file[name]
        file.create_dataset(name, data=new)

    return change


def _nan(values: np.ndarray) -> np.ndarray:
    values[3] = np.nan
    return values


def _inf(values: np.ndarray) -> np.ndarray:
    values[0] = -np.inf
    return values


def _extra(file: h5py.File) -> None:
    file.create_dataset("layers/dense/vars/2", data=np.zeros((7, 7), "float32"))


def _missing(file: h5py.File) -> None:
    del file[ARRAY]


DAMAGE: dict[str, Callable[[h5py.File], None]] = {
    "nan": _set(ARRAY, _nan),
    "inf": _set(ARRAY, _inf),
    "wrong shape": _set(ARRAY, lambda v: np.concatenate([v, v])),
    "extra array": _extra,
    "missing array": _missing,
}
"""HDF5 damage, each resealed afterwards: size and SHA-256 in the manifest match the file."""


def reseal(folder: Path) -> None:
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    weights = folder / WEIGHTS_FILE
    manifest.update(weights_sha256=sha256_of(weights), weights_bytes=weights.stat().st_size)
    path.write_text(json.dumps(manifest))


def damaged_copy(store: Path, damage: str) -> Path:
    """v0002: a copy of v0001 damaged by `damage`; its folder."""
    source = store / LINE / "v0001"
    folder = store / LINE / "v0002"
    shutil.copytree(source, folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["version"] = "v0002"
    manifest["batches"] = 200
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    weights = folder / WEIGHTS_FILE
    if damage in DAMAGE:
        with h5py.File(weights, "a") as file:
            DAMAGE[damage](file)
        reseal(folder)
    elif damage == "not hdf5":
        weights.write_bytes(b"PK\x03\x04 a zip, or anything else" * 1000)
        reseal(folder)
    elif damage == "truncated hdf5":
        weights.write_bytes(weights.read_bytes()[:50_000])
        reseal(folder)
    elif damage == "size":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "sha":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "manifest":
        (folder / MANIFEST_FILE).write_text('{"model_line": ')
    return folder


EVERY_DAMAGE = [*DAMAGE, "not hdf5", "truncated hdf5", "size", "sha", "manifest"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store holding a good v0001 of pilotnet_small (100 batches)."""
    store = tmp_path / "models"
    publish(constant_driver(0.2, -0.4, LINE), store, LINE, batches=100)
    return store


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


@pytest.mark.parametrize("damage", EVERY_DAMAGE)
def test_latest_falls_back_past_every_kind_of_damaged_newest_version(
    store: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    damaged_copy(store, damage)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # a start, model list, a trainer's second look: one warning in all
            found = latest(store, LINE)
            assert found is not None and found.manifest.version == "v0001"
    warned = warnings_about(caplog, "v0002")
    assert len(warned) == 1, warned
    assert "\n" not in warned[0]


def test_drive_starts_with_the_newest_good_version(store: Path) -> None:
    """What `charles drive` resolves at start: the good v0001, and it loads and drives."""
    damaged_copy(store, "nan")
    config = Config(model=ModelConfig(store=str(store)))
    checkpoint = checkpoint_to_drive(config)
    assert checkpoint is not None and checkpoint.manifest.version == "v0001"
    predictor = Predictor.load(LINE, checkpoint, "none", warmup_runs=1)
    prediction = predictor.predict(np.full((90, 160, 3), 100, np.uint8))
    assert (round(prediction.throttle, 4), round(prediction.steering, 4)) == (0.2, -0.4)


def test_drive_falls_back_past_arrays_that_do_not_fit_the_network(store: Path) -> None:
    damaged_copy(store, "wrong shape")
    checkpoint = checkpoint_to_drive(Config(model=ModelConfig(store=str(store))))
    assert checkpoint is not None and checkpoint.manifest.version == "v0001"


def test_when_every_version_is_damaged_it_is_an_error_not_fresh_weights(store: Path) -> None:
    damaged_copy(store, "nan")
    with h5py.File(store / LINE / "v0001" / WEIGHTS_FILE, "a") as file:
        DAMAGE["inf"](file)
    reseal(store / LINE / "v0001")
    with pytest.raises(ModelError, match="no intact checkpoint of pilotnet_small") as caught:
        checkpoint_to_drive(Config(model=ModelConfig(store=str(store))))
    assert "non-finite" in str(caught.value) and "\n" not in str(caught.value)


def test_model_list_shows_the_newest_good_version(store: Path, run_charles) -> None:
    damaged_copy(store, "nan")
    result = run_charles("model", "list", "--set", f"model.store={json.dumps(str(store))}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[pilotnet_small/v0001 (100 batches)]" in result.stdout, result.stdout
    skipped = [line for line in result.stderr.splitlines() if "skipping" in line]
    assert len(skipped) == 1 and "v0002" in skipped[0] and "non-finite" in skipped[0]


def test_the_content_check_reads_a_file_once_while_it_is_unchanged(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model_0005's weights are 226 MB: a start must not read them again for every look."""
    read: list[str] = []
    real = agent.checkpoints.load.finite_array_shapes
    monkeypatch.setattr(
        agent.checkpoints.load,
        "finite_array_shapes",
        lambda s, what: read.append(what) or real(s, what),
    )
    damaged_copy(store, "nan")
    for _ in range(3):
        assert latest(store, LINE).manifest.version == "v0001"
    assert len(read) == 2  # v0002 (refused) and v0001, once each
    # The file changed: the cached verdict must not vouch for it.
    weights = store / LINE / "v0001" / WEIGHTS_FILE
    with h5py.File(weights, "a") as file:
        DAMAGE["nan"](file)
    reseal(weights.parent)
    with pytest.raises(ModelError, match="no intact checkpoint"):
        latest(store, LINE)
    assert len(read) == 3


def test_a_store_path_that_is_a_file_is_refused_at_drive_start(tmp_path: Path) -> None:
    """`drive --store FILE` used to follow nothing, silently, driving the reference."""
    store = tmp_path / "models.txt"
    store.write_text("not a store")
    config = Config(model=ModelConfig(store=str(store)))
    with pytest.raises(ModelError) as caught:
        checkpoint_to_drive(config)
    message = str(caught.value)
    assert f"model store {store} is not a folder" in message and "\n" not in message
    assert "model.store" in message
