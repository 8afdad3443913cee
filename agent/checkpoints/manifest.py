"""A checkpoint on disk: one folder per model line and version, and its manifest.

    <store>/<model line>/<version>/model.weights.h5
    <store>/<model line>/<version>/manifest.json

Versions are `v0001`, `v0002`, ... in publishing order (ordered by number, so v10000 follows
v9999); the manifest says which line the weights belong to, how many batches trained them,
their size and SHA-256, so a loader can refuse a file that is not what it claims before
touching the model. A manifest is untrusted input: a small regular file, every field's type
and value checked, fields from newer writers ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.checkpoints.store_files import refusal_error
from agent.errors import ModelError, one_line, quoted
from agent.files import FileRefused, FileTooLarge, read_regular_file
from agent.nets.registry import LINE_NAMES, LINES, OUTPUT_NAMES

WEIGHTS_FILE = "model.weights.h5"
MANIFEST_FILE = "manifest.json"
MANIFEST_LIMIT = 64 * 1024
"""Bytes; a manifest is a few hundred, so anything near this is not one."""

_SHA256_HEX = frozenset("0123456789abcdef")
_FIELDS = ("model_line", "version", "batches", "created", "weights_sha256", "input_shape")


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint is; stored as manifest.json beside its weights."""

    model_line: str
    version: str
    batches: int
    """Training batches behind these weights (0 for a fresh model)."""
    created: str
    """UTC time of publishing, ISO 8601."""
    weights_sha256: str
    input_shape: tuple[int, int, int]
    note: str = ""
    weights_bytes: int | None = None
    """Size of the weights file; None in manifests written before it was recorded."""
    loss: tuple[tuple[str, float], ...] = ()
    """Training loss per head (and "total") over the batches before publishing; on disk a
    JSON object. Empty when unknown (a fresh model, an older writer)."""
    outputs: tuple[str, ...] = OUTPUT_NAMES
    """The network's output names, in order; manifests from before they were recorded are
    taken to have the lines' outputs."""

    @property
    def loss_by_name(self) -> dict[str, float]:
        return dict(self.loss)


@dataclass(frozen=True)
class Checkpoint:
    """A published version: its folder and manifest."""

    folder: Path
    manifest: Manifest

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def name(self) -> str:
        """Display name, e.g. `pilotnet_small/v0003 (12000 batches)`."""
        return (
            f"{self.manifest.model_line}/{self.manifest.version} ({self.manifest.batches} batches)"
        )


def version_number(name: str) -> int | None:
    """7 for "v0007"; None for anything that is not a version name in its one spelling."""
    digits = name[1:]
    if not (name.startswith("v") and digits.isascii() and digits.isdigit() and len(digits) >= 4):
        return None
    number = int(digits)
    return number if name == version_name(number) else None


def version_name(number: int) -> str:
    return f"v{number:04d}"


def read_manifest(folder: Path) -> Manifest:
    """Parse and check `folder/manifest.json`; a `ModelError` names what is wrong.

    When `folder` is named like a version, the manifest's version must be that name.
    """
    path = folder / MANIFEST_FILE
    what = f"checkpoint {folder}"
    try:
        raw = read_regular_file(path, MANIFEST_LIMIT)
    except FileTooLarge as error:
        size = "" if error.size is None else f"{error.size} bytes, "
        raise _bad_manifest(path, f"it is {size}far too big for a manifest") from None
    except FileRefused as error:
        raise refusal_error(error, path, what, missing="it is not a Charles checkpoint") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad_manifest(path, "it is not UTF-8 text") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise _bad_manifest(path, f"it is not JSON ({one_line(error, 60)})") from None
    manifest = _manifest_from(data, path)
    if version_number(folder.name) is not None and manifest.version != folder.name:
        raise _bad_manifest(path, f"it says version {manifest.version} in folder {folder.name}")
    return manifest


def _manifest_from(data: Any, path: Path) -> Manifest:
    """Check every field's type and value; unknown fields (from newer writers) are ignored."""
    if not isinstance(data, dict):
        raise _bad_manifest(path, "it is not a JSON object")
    absent = [key for key in _FIELDS if key not in data]
    if absent:
        raise _bad_manifest(path, f"it lacks {', '.join(absent)}")
    line = data["model_line"]
    if line not in LINE_NAMES:
        raise _bad_manifest(
            path, f"model_line {quoted(line)} is not a known line ({', '.join(LINE_NAMES)})"
        )
    version = data["version"]
    if not isinstance(version, str) or version_number(version) is None:
        raise _bad_manifest(path, f"version {quoted(version)} is not like v0003")
    batches = data["batches"]
    if not is_count(batches):
        raise _bad_manifest(path, f"batches {quoted(batches)} is not a whole number >= 0")
    sha = data["weights_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha.lower()) <= _SHA256_HEX):
        raise _bad_manifest(path, f"weights_sha256 {quoted(sha)} is not 64 hex digits")
    shape = data["input_shape"]
    expected = LINES[line].input_shape
    if not (isinstance(shape, list) and all(is_count(d) for d in shape)):
        raise _bad_manifest(path, f"input_shape {quoted(shape)} is not a list of sizes")
    if tuple(shape) != expected:
        raise _bad_manifest(path, f"input_shape {quoted(shape)} is not {line}'s {list(expected)}")
    size = data.get("weights_bytes")
    if size is not None and not is_count(size):
        raise _bad_manifest(path, f"weights_bytes {quoted(size)} is not a whole number >= 0")
    created, note = data["created"], data.get("note", "")
    if not isinstance(created, str) or not isinstance(note, str):
        raise _bad_manifest(path, "created and note must be text")
    loss = data.get("loss", {})
    if not (isinstance(loss, dict) and all(_is_finite_number(v) for v in loss.values())):
        raise _bad_manifest(path, f"loss {quoted(loss)} is not an object of finite numbers")
    outputs = data.get("outputs", list(OUTPUT_NAMES))
    if outputs != list(OUTPUT_NAMES):
        raise _bad_manifest(
            path, f"outputs {quoted(outputs)} are not {line}'s {list(OUTPUT_NAMES)}"
        )
    return Manifest(
        model_line=line,
        version=version,
        batches=batches,
        created=created,
        weights_sha256=sha.lower(),
        input_shape=expected,
        note=note,
        weights_bytes=size,
        loss=tuple((str(name), float(value)) for name, value in loss.items()),
    )


def is_count(value: object) -> bool:
    """Whether `value` is a whole number >= 0 (not a bool) that a manifest may hold."""
    # Bounded: a batch count is also a TensorFlow int64 step counter.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too big for a float
        return False


def _bad_manifest(path: Path, problem: str) -> ModelError:
    return ModelError(
        f"checkpoint manifest {path} is unreadable: {problem}; republish the checkpoint or "
        "delete its folder"
    )


def manifest_bytes(manifest: Manifest) -> bytes:
    """`manifest` as its manifest.json holds it: a JSON object, `loss` as an object."""
    fields = {
        **asdict(manifest),
        "input_shape": list(manifest.input_shape),
        "loss": manifest.loss_by_name,
        "outputs": list(manifest.outputs),
    }
    return (json.dumps(fields, indent=2) + "\n").encode("utf-8")
