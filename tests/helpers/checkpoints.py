"""Checkpoints of every kind a hot swap must refuse, written the way a careless or hostile
machine sharing the model store could write them."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from agent.checkpoints.load import sha256_of
from agent.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE, Manifest
from agent.checkpoints.publish import publish
from agent.nets.registry import get_line
from tests.helpers.models import constant_driver

LINE = "pilotnet_small"
OTHER_LINE = "model_0005_inceptionresnetv2"
OTHER_SHAPE = list(get_line(OTHER_LINE).input_shape)


def publish_driver(store: Path, throttle: float, steering: float) -> Path:
    """A good checkpoint predicting (throttle, steering) whatever it sees; its folder."""
    model = constant_driver(throttle, steering, LINE)
    return publish(model, store, LINE, batches=100, note=f"constant {throttle}, {steering}").folder


def nan_output_driver() -> keras.Model:
    """Finite weights whose throttle is NaN on any frame: two hidden units overflow to +inf
    (3e38 x 2 + 3e38 x 2), and the head takes one minus the other: inf - inf is NaN."""
    model = constant_driver(0.0, 0.0, LINE)
    first = model.get_layer("throttle_dense_50")
    kernel, bias = first.get_weights()
    bias = np.zeros_like(bias)
    bias[:2] = 3e38
    first.set_weights([np.zeros_like(kernel), bias])
    second = model.get_layer("throttle_dense_10")
    kernel, bias = second.get_weights()
    kernel = np.zeros_like(kernel)
    kernel[:2, :2] = 2.0
    second.set_weights([kernel, np.zeros_like(bias)])
    head = model.get_layer("throttle")
    kernel, bias = head.get_weights()
    kernel = np.zeros_like(kernel)
    kernel[0, 0], kernel[1, 0] = 1.0, -1.0
    head.set_weights([kernel, np.zeros_like(bias)])
    return model


def write_version(
    store: Path,
    version: str,
    model: keras.Model | None = None,
    weights_bytes: bytes | None = None,
    manifest: dict[str, Any] | None = None,
    line_folder: str = LINE,
    tamper: Callable[[Path], None] | None = None,
) -> Path:
    """A version folder with an honest manifest (sha and size of the weights written) unless
    `manifest` overrides fields; {"absent": True} writes no manifest at all. Written in a
    hidden folder and renamed into place, as `publish` does, so a watcher sees it whole."""
    final = store / line_folder / version
    folder = final.with_name(f".writing-{version}")
    folder.mkdir(parents=True)
    weights = folder / WEIGHTS_FILE
    if model is not None:
        model.save_weights(str(weights))
    elif weights_bytes is not None:
        weights.write_bytes(weights_bytes)
    overrides = dict(manifest or {})
    if overrides.pop("absent", False):
        folder.rename(final)
        return final
    present = weights.exists()
    fields = dataclasses.asdict(
        Manifest(
            model_line=LINE, version=version, batches=1, created="2026-11-29T00:00:00+00:00",
            weights_sha256=sha256_of(weights) if present else "0" * 64,
            input_shape=get_line(LINE).input_shape,
            weights_bytes=weights.stat().st_size if present else 0,
        )
    )  # fmt: skip
    fields["input_shape"] = list(fields["input_shape"])
    fields["loss"] = {}
    fields["outputs"] = list(fields["outputs"])
    fields.update(overrides)
    (folder / MANIFEST_FILE).write_text(json.dumps(fields))
    if tamper is not None:
        tamper(folder)
    folder.rename(final)
    return final


def nan_weights_file(tmp: Path) -> bytes:
    """A pilotnet_small weights file with one NaN in it (publish would refuse to write it)."""
    model = constant_driver(0.1, 0.1, LINE)
    path = tmp / "nan.weights.h5"
    model.save_weights(str(path))
    with h5py.File(path, "r+") as file:
        names: list[str] = []
        file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset)
                        else None)  # fmt: skip
        dataset = file[names[0]]
        values = dataset[()]
        values.flat[0] = np.nan
        dataset[...] = values
    return path.read_bytes()


def lambda_keras_file(path: Path, marker: Path) -> None:
    """A `.keras` model with a Lambda layer that creates `marker` as soon as Keras loads it
    (it runs the function to infer the layer's output): if Charles ever deserialised the
    file, the marker would appear.

    The path is a constant in the function's own code: Keras cannot load a Lambda that needs a
    closure or default arguments, so one with either would fail to load and prove nothing.
    """
    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(eval(code))(inputs)  # the point of this file
    keras.Model(inputs, outputs).save(str(path))
    marker.unlink(missing_ok=True)  # building the model ran it once; only a load counts


def write_slowly(source: Path, folder: Path, chunks: int = 8, pause: float = 0.25) -> None:
    """Copy a checkpoint folder the way `cp` over a slow share does: the manifest first, then
    the weights in pieces, so a watcher sees the weights half written for a while."""
    folder.mkdir(parents=True)
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    manifest["version"] = folder.name
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    data = (source / WEIGHTS_FILE).read_bytes()
    step = max(1, len(data) // chunks)
    with (folder / WEIGHTS_FILE).open("wb") as stream:
        for start in range(0, len(data), step):
            if start:
                time.sleep(pause)
            stream.write(data[start : start + step])
            stream.flush()


BAD_KINDS = {
    "no manifest": "manifest.json",
    "other line": "its manifest says model_0005_inceptionresnetv2",
    "input shape": "input_shape [66, 66, 3]",
    "output names": "outputs",
    "sha mismatch": "SHA-256",
    "nan weights": "NaN",
    "nan prediction": "non-finite",
    "keras file as weights": "not a readable HDF5",
}
"""Each kind of bad checkpoint, and a fragment of the reason it must be refused with."""


def write_every_bad_kind(store: Path, first: int, scratch: Path, marker: Path) -> dict[str, str]:
    """One version folder of each of BAD_KINDS, numbered from `first`; version -> kind.

    The `.keras` model (with a Lambda layer that would create `marker`) is written as the
    weights file of one version, and beside the weights of another.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    keras_file = scratch / "lambda.keras"
    lambda_keras_file(keras_file, marker)
    fine = constant_driver(0.1, 0.1, LINE)
    kinds: dict[str, str] = {}
    for number, kind in enumerate(BAD_KINDS, start=first):
        version = f"v{number:04d}"
        kinds[version] = kind
        if kind == "no manifest":
            write_version(store, version, model=fine, manifest={"absent": True})
        elif kind == "other line":
            write_version(
                store, version, model=fine,
                manifest={"model_line": OTHER_LINE, "input_shape": OTHER_SHAPE},
            )  # fmt: skip
        elif kind == "input shape":
            write_version(store, version, model=fine, manifest={"input_shape": [66, 66, 3]})
        elif kind == "output names":
            write_version(
                store, version, model=fine, manifest={"outputs": ["steering", "throttle"]}
            )
        elif kind == "sha mismatch":

            def corrupt(folder: Path) -> None:
                data = bytearray((folder / WEIGHTS_FILE).read_bytes())
                data[-100] ^= 0xFF  # same size, other content: corrupted or replaced
                (folder / WEIGHTS_FILE).write_bytes(bytes(data))
                (folder / "model.keras").write_bytes(keras_file.read_bytes())

            write_version(store, version, model=fine, tamper=corrupt)
        elif kind == "nan weights":
            write_version(store, version, weights_bytes=nan_weights_file(scratch))
        elif kind == "nan prediction":
            write_version(store, version, model=nan_output_driver())
        elif kind == "keras file as weights":
            write_version(store, version, weights_bytes=keras_file.read_bytes())
    return kinds
