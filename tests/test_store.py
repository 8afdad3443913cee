"""The model store: publish, find, verify and load checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import agent.checkpoints.load
import agent.checkpoints.publish
from agent.checkpoints.load import load_into, sha256_of
from agent.checkpoints.manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    read_manifest,
    version_number,
)
from agent.checkpoints.publish import prune, publish
from agent.checkpoints.resolve import latest, line_weight_shapes, resolve, versions
from agent.checkpoints.store_files import link_error, refusal_error
from agent.errors import ModelError
from agent.files import FileIsLink, FileMissing, FileNotRegular, FileUnopenable
from agent.inference.predictor import Predictor
from agent.nets.registry import get_line
from tests.helpers.charles import assert_one_line_error

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
    # A checkpoint folder anywhere (a trainer's output, a shared drive) by its path.
    assert resolve(tmp_path / "other", LINE, str(checkpoint.folder)) == checkpoint


def test_a_version_has_one_spelling() -> None:
    assert version_number("v0007") == 7 and version_number("v10000") == 10000
    for name in ("v00007", "x0007", "V0007", "0007", "v007", "v00a7", "v\uff10\uff10\uff10\uff17"):
        assert version_number(name) is None, name


def test_a_manifest_without_a_note_loads(store: Path) -> None:
    path = store / LINE / "v0001" / MANIFEST_FILE
    data = json.loads(path.read_text())
    del data["note"]
    path.write_text(json.dumps(data))
    assert read_manifest(path.parent).note == ""


def test_a_damaged_or_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    model = get_line(LINE).build("none")
    checkpoint = publish(model, tmp_path, LINE, batches=1)
    with pytest.raises(ModelError, match="is for model line pilotnet_small, not model_0005"):
        load_into(model, checkpoint, "model_0005_inceptionresnetv2")
    weights = checkpoint.folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(ModelError, match="does not match its manifest's size"):
        load_into(model, checkpoint, LINE)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
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
        "bench", "model", "--model", LINE, "--checkpoint", str(folder), "--seconds", "0.1"
    )
    assert_one_line_error(result, str(folder), "manifest.json", "not a Charles checkpoint")


# --- helpers for damaging a store ------------------------------------------------------------


def edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def reseal(folder: Path) -> None:
    """Make the manifest agree with whatever the weights file now is."""
    weights = folder / WEIGHTS_FILE
    edit_manifest(folder, weights_sha256=sha256_of(weights))
    if "weights_bytes" in json.loads((folder / MANIFEST_FILE).read_text()):
        edit_manifest(folder, weights_bytes=weights.stat().st_size)


def copy_as(checkpoint: Checkpoint, version: str) -> Path:
    """A copy of `checkpoint` as another version of its line (the manifest says so too)."""
    folder = checkpoint.folder.parent / version
    shutil.copytree(checkpoint.folder, folder)
    edit_manifest(folder, version=version)
    return folder


@pytest.fixture
def small() -> keras.Model:
    return get_line(LINE).build("none")


@pytest.fixture
def store(tmp_path: Path, small: keras.Model) -> Path:
    """A store holding v0001 of pilotnet_small."""
    store = tmp_path / "models"
    publish(small, store, LINE, batches=1)
    return store


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and text in r.getMessage()
    ]


def one_line_error(call: Callable[[], object]) -> str:
    with pytest.raises(ModelError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 700, message
    return message


# --- item 9: a file path means that file -----------------------------------------------------


def test_a_file_other_than_the_checkpoints_weights_is_refused(store: Path) -> None:
    folder = store / LINE / "v0001"
    other = folder / "other.weights.h5"
    shutil.copy(folder / WEIGHTS_FILE, other)
    message = one_line_error(lambda: resolve(store, LINE, str(other)))
    assert f"{other} is a file, not a checkpoint" in message
    assert f"give that folder or its {WEIGHTS_FILE}" in message
    assert resolve(store, LINE, str(folder / WEIGHTS_FILE)).folder == folder


# --- item 10: versions, links, manifests, fallbacks, publishing ------------------------------


def test_versions_are_ordered_by_number(store: Path) -> None:
    first = versions(store, LINE)[0]
    for version in ("v0002", "v0010", "v9999", "v10000"):
        copy_as(first, version)
    (store / LINE / "v00003").mkdir()  # not a version name: a version has one spelling
    names = [c.manifest.version for c in versions(store, LINE)]
    assert names == ["v0001", "v0002", "v0010", "v9999", "v10000"]
    assert latest(store, LINE).manifest.version == "v10000"
    assert resolve(store, LINE, "v10000").folder.name == "v10000"


def test_links_inside_the_store_are_never_followed(
    store: Path, tmp_path: Path, small: keras.Model, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = publish(small, tmp_path / "elsewhere", LINE, batches=7)
    root = store / LINE
    (root / "v0002").symlink_to(elsewhere.folder, target_is_directory=True)
    assert [c.manifest.version for c in versions(store, LINE)] == ["v0001"]
    assert latest(store, LINE).manifest.version == "v0001"
    assert "symbolic link" in one_line_error(lambda: resolve(store, LINE, "v0002"))
    assert len(warnings_about(caplog, "v0002")) == 1

    # A real folder whose files are links: skipped by latest, refused by load_into.
    for version, name in (("v0003", WEIGHTS_FILE), ("v0004", MANIFEST_FILE)):
        folder = copy_as(versions(store, LINE)[0], version)
        (folder / name).unlink()
        target = elsewhere.folder / name
        if name == MANIFEST_FILE:
            target = tmp_path / "manifest.json"
            target.write_text(
                (root / "v0001" / MANIFEST_FILE).read_text().replace("v0001", version)
            )
        (folder / name).symlink_to(target)
    assert latest(store, LINE).manifest.version == "v0001"
    linked = Checkpoint(root / "v0003", versions(store, LINE)[-1].manifest)
    assert "symbolic link" in one_line_error(lambda: load_into(small, linked, LINE))
    assert "symbolic link" in one_line_error(lambda: resolve(store, LINE, "v0004"))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"version": "v0002"}, "says version v0002 in folder v0001"),
        ({"version": "latest"}, "version 'latest' is not like v0003"),
        ({"input_shape": [270, 480, 3]}, "input_shape [270, 480, 3] is not pilotnet_small's"),
        ({"input_shape": "90x160"}, "input_shape '90x160' is not a list"),
        ({"batches": -1}, "batches -1 is not a whole number"),
        ({"batches": True}, "batches True is not a whole number"),
        ({"batches": "12"}, "batches '12' is not a whole number"),
        ({"weights_sha256": "abc"}, "weights_sha256 'abc' is not 64 hex digits"),
        ({"weights_sha256": "g" * 64}, "is not 64 hex digits"),
        ({"model_line": "gta\nrm -rf /" + "x" * 200}, "model_line 'gta\\nrm -rf /xxx"),
        ({"created": 5}, "created and note must be text"),
    ],
)
def test_manifest_fields_are_checked(store: Path, changes: dict, expected: str) -> None:
    edit_manifest(store / LINE / "v0001", **changes)
    message = one_line_error(lambda: resolve(store, LINE, "v0001"))
    assert "checkpoint manifest" in message and expected in message
    assert "model.line" not in message  # never advice to set a line to a value from a file


def test_a_manifest_naming_an_unknown_line_is_not_advice(store: Path) -> None:
    edit_manifest(store / LINE / "v0001", model_line="model_9999")
    message = one_line_error(lambda: resolve(store, LINE, "v0001"))
    assert "model_line 'model_9999' is not a known line (model_0005_inceptionresnetv2," in message
    assert "set model.line" not in message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("not_json", "it is not JSON"),
        ("not_utf8", "it is not UTF-8 text"),
        ("directory", "manifest.json is not a regular file"),
        ("fifo", "manifest.json is not a regular file"),
        ("huge", "far too big for a manifest"),
        ("dev_zero", "manifest.json is a symbolic link"),
        ("not_object", "it is not a JSON object"),
        ("missing", "has no manifest.json; it is not a Charles checkpoint"),
    ],
)
def test_an_odd_manifest_is_one_line_and_never_blocks(
    store: Path, damage: str, expected: str
) -> None:
    folder = store / LINE / "v0001"
    manifest = folder / MANIFEST_FILE
    manifest.unlink()
    if damage == "not_json":
        manifest.write_text("{not json")
    elif damage == "not_utf8":
        manifest.write_bytes(b'{"note": "\xff\xfe"}')
    elif damage == "directory":
        manifest.mkdir()
    elif damage == "fifo":
        os.mkfifo(manifest)
    elif damage == "huge":
        manifest.write_text(" " * (1 << 20) + "{}")
    elif damage == "dev_zero":
        manifest.symlink_to("/dev/zero")
    elif damage == "not_object":
        manifest.write_text("[1, 2]")
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            resolve(store, LINE, "v0001")
        except BaseException as error:  # handed to the main thread's assertions
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading the manifest blocked"
    assert len(outcome) == 1 and isinstance(outcome[0], ModelError), outcome
    message = str(outcome[0])
    assert "\n" not in message and str(folder) in message and expected in message


def test_one_unreadable_manifest_does_not_hide_the_others(
    store: Path, caplog: pytest.LogCaptureFixture, run_charles
) -> None:
    (copy_as(versions(store, LINE)[0], "v0002") / MANIFEST_FILE).write_bytes(b"\xff{")
    assert [c.manifest.version for c in versions(store, LINE)] == ["v0001"]
    versions(store, LINE)
    assert len(warnings_about(caplog, "v0002")) == 1  # once, however often the store is read
    result = run_charles("model", "list", "--set", f"model.store={json.dumps(str(store))}")
    assert result.returncode == 0, result.stderr
    assert "pilotnet_small/v0001 (1 batches)" in result.stdout


@pytest.mark.parametrize("damage", ["manifest", "no_weights", "size", "sha", "nan"])
def test_latest_falls_back_past_a_damaged_newest_version(
    store: Path, small: keras.Model, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    folder = copy_as(versions(store, LINE)[0], "v0002")
    weights = folder / WEIGHTS_FILE
    if damage == "manifest":
        edit_manifest(folder, batches=-5)
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "size":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "sha":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "nan":  # NaN weights with an honest manifest: size and SHA-256 match
        with h5py.File(weights, "a") as file:
            file["layers/dense/vars/1"][3] = np.nan
        reseal(folder)
        message = one_line_error(
            lambda: load_into(small, Checkpoint(folder, read_manifest(folder)), LINE)
        )
        assert "holds non-finite values (NaN or inf) in layers/dense/vars/1" in message
    assert latest(store, LINE).manifest.version == "v0001"
    assert len(warnings_about(caplog, "v0002")) == 1


def test_latest_refuses_when_every_version_is_damaged(store: Path) -> None:
    (store / LINE / "v0001" / WEIGHTS_FILE).write_bytes(b"junk")
    message = one_line_error(lambda: latest(store, LINE))
    assert "no intact checkpoint of pilotnet_small" in message
    assert 'model.checkpoint = "none"' in message


def test_weights_are_hashed_once_per_process_while_unchanged(
    store: Path, small: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    real = agent.checkpoints.load._hash_stream
    monkeypatch.setattr(
        agent.checkpoints.load, "_hash_stream", lambda s: hashed.append(s.name) or real(s)
    )
    checkpoint = latest(store, LINE)
    load_into(small, checkpoint, LINE)
    load_into(get_line(LINE).build("none"), checkpoint, LINE)
    assert len(hashed) == 1
    # Same size, new content: the cache must not vouch for it.
    data = bytearray(checkpoint.weights.read_bytes())
    data[-1] ^= 0xFF
    checkpoint.weights.write_bytes(bytes(data))
    assert "SHA-256" in one_line_error(lambda: load_into(small, checkpoint, LINE))
    assert len(hashed) == 2


def test_absurd_weights_files_are_refused_before_hashing(
    store: Path, small: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = versions(store, LINE)[0]
    with checkpoint.weights.open("r+b") as stream:
        stream.truncate(64 << 20)  # sparse: costs no disk
    reseal(checkpoint.folder)
    checkpoint = versions(store, LINE)[0]
    monkeypatch.setattr(agent.checkpoints.load, "_hash_stream", lambda _: pytest.fail("hashed"))
    message = one_line_error(lambda: load_into(small, checkpoint, LINE))
    assert "far more than a weights file can be for a 475390-parameter network" in message

    checkpoint.weights.unlink()
    checkpoint.weights.mkdir()
    assert "is not a regular file" in one_line_error(lambda: load_into(small, checkpoint, LINE))


@pytest.mark.parametrize(
    ("umask", "folder_mode", "file_mode"),
    [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o002, 0o755, 0o644)],
)
def test_published_files_get_normal_permissions(
    tmp_path: Path, small: keras.Model, umask: int, folder_mode: int, file_mode: int
) -> None:
    previous = os.umask(umask)
    try:
        checkpoint = publish(small, tmp_path, LINE, batches=0)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(checkpoint.folder.stat().st_mode) == folder_mode
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        assert stat.S_IMODE((checkpoint.folder / name).stat().st_mode) == file_mode


def test_publish_writes_under_a_temporary_name_then_renames(
    tmp_path: Path, small: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / LINE / "v0001"
    real = agent.checkpoints.publish._write_new_file
    written: list[Path] = []

    def write_new_file(path: Path, data: bytes) -> None:
        assert not final.exists(), "the version folder exists before its files are written"
        written.append(Path(path))
        real(path, data)

    monkeypatch.setattr(agent.checkpoints.publish, "_write_new_file", write_new_file)
    checkpoint = publish(small, tmp_path, LINE, batches=0)
    assert checkpoint.folder == final
    assert [p.name for p in written] == [WEIGHTS_FILE, MANIFEST_FILE]
    assert written[0].parent.parent == final.parent and written[0].parent.name.startswith(".")
    assert [p.name for p in final.parent.iterdir()] == ["v0001"]  # no staging left behind


def test_concurrent_publishes_each_get_their_own_version(
    tmp_path: Path, small: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both publishers are writing their weights at once, so both saw the same versions on disk.
    together = threading.Barrier(2, timeout=30)
    real = agent.checkpoints.publish._write_new_file

    def write_new_file(path: Path, data: bytes) -> None:
        if path.name == WEIGHTS_FILE:
            together.wait()
        real(path, data)

    monkeypatch.setattr(agent.checkpoints.publish, "_write_new_file", write_new_file)
    results: list[Checkpoint | BaseException] = []

    def publish_one(batches: int) -> None:
        try:
            results.append(publish(small, tmp_path, LINE, batches=batches))
        except BaseException as error:  # handed to the main thread's assertions
            results.append(error)

    threads = [threading.Thread(target=publish_one, args=(n,)) for n in (10, 20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(r, Checkpoint) for r in results), results
    stored = versions(tmp_path, LINE)
    assert [c.manifest.version for c in stored] == ["v0001", "v0002"]
    assert sorted(c.manifest.batches for c in stored) == [10, 20]
    assert sorted(results, key=lambda c: c.manifest.version) == stored


def test_a_publish_that_loses_the_race_takes_the_next_number(
    store: Path, small: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another publisher renames v0001 into place between our look and our rename.
    first = versions(store, LINE)[0]
    before = (first.folder / MANIFEST_FILE).read_bytes(), first.weights.read_bytes()
    real_next = agent.checkpoints.publish._next_number
    calls = iter([1])
    monkeypatch.setattr(
        agent.checkpoints.publish, "_next_number", lambda root: next(calls, None) or real_next(root)
    )
    monkeypatch.setattr(agent.checkpoints.publish.os.path, "lexists", lambda _: False)
    checkpoint = publish(small, store, LINE, batches=2)
    monkeypatch.undo()
    assert checkpoint.manifest.version == "v0002" == checkpoint.folder.name
    assert read_manifest(checkpoint.folder) == checkpoint.manifest
    assert ((first.folder / MANIFEST_FILE).read_bytes(), first.weights.read_bytes()) == before
    assert [c.manifest.version for c in versions(store, LINE)] == ["v0001", "v0002"]


def test_publish_saves_the_network_only_and_refuses_nan(tmp_path: Path, small: keras.Model) -> None:
    small.compile(optimizer="adam", loss="mse")
    small.optimizer.build(small.trainable_variables)
    checkpoint = publish(small, tmp_path, LINE, batches=3)
    with h5py.File(checkpoint.weights, "r") as file:
        assert "optimizer" not in file
    fresh = get_line(LINE).build("none")
    load_into(fresh, checkpoint, LINE)
    assert all(
        np.array_equal(a, b) for a, b in zip(fresh.get_weights(), small.get_weights(), strict=True)
    )

    bias = small.get_layer("steering").bias
    bias.assign(np.full(bias.shape, np.nan, dtype="float32"))
    message = one_line_error(lambda: publish(small, tmp_path, LINE, batches=4))
    assert "cannot publish pilotnet_small: its weight steering/bias holds NaN or inf" in message
    assert [c.manifest.version for c in versions(tmp_path, LINE)] == ["v0001"]


def test_prune_keeps_the_newest_versions_and_never_fewer_than_two(tmp_path: Path) -> None:
    from agent.checkpoints.publish import PRUNED_PREFIX
    from tests.helpers.checkpoints import LINE as DRIVER_LINE
    from tests.helpers.checkpoints import publish_driver

    for step in range(4):
        publish_driver(tmp_path, 0.1 * step, 0.0)
    assert prune(tmp_path, DRIVER_LINE, keep=3) == ["v0001"]
    assert [c.manifest.version for c in versions(tmp_path, DRIVER_LINE)] == [
        "v0002", "v0003", "v0004",
    ]  # fmt: skip
    assert prune(tmp_path, DRIVER_LINE, keep=1) == [
        "v0002"
    ]  # two at least: the newest and one back
    assert [c.manifest.version for c in versions(tmp_path, DRIVER_LINE)] == ["v0003", "v0004"]
    assert prune(tmp_path, DRIVER_LINE, keep=2) == []
    left = sorted(path.name for path in (tmp_path / DRIVER_LINE).iterdir())
    assert left == ["v0003", "v0004"], left  # nothing half-removed under a hidden name
    assert not any(name.startswith(PRUNED_PREFIX) for name in left)


def test_each_refusal_to_open_a_store_file_is_its_own_line() -> None:
    path = Path("/store/pilotnet_small/v0001/model.weights.h5")
    what = "checkpoint v0001"
    missing = "republish it"
    assert str(refusal_error(FileIsLink(), path, what, missing)) == (
        "checkpoint v0001: model.weights.h5 is a symbolic link, which the model store never "
        "follows; replace it with the real file or folder"
    )
    assert str(link_error(path, what)) == str(refusal_error(FileIsLink(), path, what, missing))
    gone = FileMissing(FileNotFoundError(2, "No such file"))
    assert str(refusal_error(gone, path, what, missing)) == (
        "checkpoint v0001 has no model.weights.h5; republish it"
    )
    assert str(refusal_error(FileNotRegular(), path, what, missing)) == (
        "checkpoint v0001: model.weights.h5 is not a regular file; republish it"
    )
    denied = FileUnopenable(PermissionError(13, "Permission denied"))
    assert str(refusal_error(denied, path, what, missing)) == (
        "checkpoint v0001: cannot read model.weights.h5 (Permission denied)"
    )


def test_resolve_names_what_the_store_has_and_what_a_setting_may_be(tmp_path: Path) -> None:
    assert one_line_error(lambda: resolve(tmp_path, LINE, "v0002")) == (
        f"model.checkpoint: no version v0002 of {LINE} in {tmp_path} (have: none)"
    )
    model = get_line(LINE).build("none")
    publish(model, tmp_path, LINE, batches=1)
    publish(model, tmp_path, LINE, batches=2)
    assert one_line_error(lambda: resolve(tmp_path, LINE, "v0003")) == (
        f"model.checkpoint: no version v0003 of {LINE} in {tmp_path} (have: v0001, v0002)"
    )
    assert one_line_error(lambda: resolve(tmp_path, LINE, "newest")) == (
        'model.checkpoint: newest is not "latest", "none", a version like v0003 or a '
        "checkpoint folder"
    )


def test_a_lines_weight_shapes_are_learned_once_per_process() -> None:
    first = line_weight_shapes(LINE)
    assert line_weight_shapes(LINE) is first
    assert first == Counter(tuple(w.shape) for w in get_line(LINE).build("none").weights)


def test_a_version_another_pruner_took_first_is_skipped_and_the_rest_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.checkpoints import LINE as DRIVER_LINE
    from tests.helpers.checkpoints import publish_driver

    for step in range(4):
        publish_driver(tmp_path, 0.1 * step, 0.0)
    real_rename = os.rename

    def taken_first(source: Path, target: Path) -> None:
        if Path(source).name == "v0001":  # another trainer's pruner got there first
            shutil.rmtree(source)
            raise FileNotFoundError(2, "No such file or directory")
        real_rename(source, target)

    monkeypatch.setattr(agent.checkpoints.publish.os, "rename", taken_first)
    assert prune(tmp_path, DRIVER_LINE, keep=2) == ["v0002"]
    assert sorted(p.name for p in (tmp_path / DRIVER_LINE).iterdir()) == ["v0003", "v0004"]


def test_a_publish_asks_for_room_for_its_weights_and_a_reserve(tmp_path: Path) -> None:
    from agent.checkpoints.publish import PUBLISH_RESERVE, require_room, weights_bytes_estimate

    model = get_line(LINE).build("none")
    estimate = weights_bytes_estimate(model.count_params())
    assert estimate == model.count_params() * 4 + PUBLISH_RESERVE == 475_390 * 4 + 256 * 1024
    checkpoint = publish(model, tmp_path, LINE, batches=1)
    written = sum(path.stat().st_size for path in checkpoint.folder.iterdir())
    assert model.count_params() * 4 < written < estimate  # float32 weights, HDF5 bookkeeping
    require_room(tmp_path / LINE, estimate, LINE)  # this disk has room
    message = one_line_error(lambda: require_room(tmp_path / LINE, 10**15, LINE))
    free = shutil.disk_usage(tmp_path).free
    assert message == (
        f"cannot publish {LINE} into model store {tmp_path}: {free / 1e6:.1f} MB free, a "
        "checkpoint needs 1000000000.0 MB; free some space there (the versions already "
        "published are intact)"
    )
