"""The model store: checkpoints on disk, one folder per model line and version.

    <store>/<model line>/<version>/model.weights.h5
    <store>/<model line>/<version>/manifest.json

Versions are `v0001`, `v0002`, ... in publishing order; the manifest says which line the
weights belong to, how many batches trained them and their SHA-256, so a loader can refuse a
file that is not what it claims before touching the model. A version folder is written under a
temporary name and renamed into place, so a watcher never sees half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ModelError
from agent.weights import load_weights_strictly

if TYPE_CHECKING:
    import keras

WEIGHTS_FILE = "model.weights.h5"
MANIFEST_FILE = "manifest.json"
_VERSION = re.compile(r"^v(\d{4,})$")


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """Parse and check `folder/manifest.json`; a `ModelError` names what is wrong."""
    path = folder / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["input_shape"] = tuple(data["input_shape"])
        return Manifest(**data)
    except FileNotFoundError:
        raise ModelError(
            f"checkpoint {folder} has no {MANIFEST_FILE}; it is not a Charles checkpoint"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelError(
            f"checkpoint manifest {path} is unreadable ({error}); republish it"
        ) from None


def versions(store: Path, line: str) -> list[Checkpoint]:
    """All complete checkpoints of `line`, oldest first."""
    root = store / line
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if _VERSION.match(folder.name) and (folder / MANIFEST_FILE).is_file():
            found.append(Checkpoint(folder, read_manifest(folder)))
    return found


def latest(store: Path, line: str) -> Checkpoint | None:
    """The newest checkpoint of `line`, or None when the store has none."""
    found = versions(store, line)
    return found[-1] if found else None


def publish(model: keras.Model, store: Path, line: str, batches: int, note: str = "") -> Checkpoint:
    """Save `model`'s weights as the next version of `line`, atomically."""
    root = store / line
    root.mkdir(parents=True, exist_ok=True)
    existing = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name))]
    version = f"v{max(existing, default=0) + 1:04d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        model.save_weights(str(staging / WEIGHTS_FILE))
        manifest = Manifest(
            model_line=line,
            version=version,
            batches=batches,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            weights_sha256=sha256_of(staging / WEIGHTS_FILE),
            input_shape=tuple(int(d) for d in model.input_shape[1:]),
            note=note,
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        os.replace(staging, root / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Checkpoint(root / version, manifest)


def resolve(store: Path, line: str, checkpoint: str) -> Checkpoint | None:
    """Turn the `model.checkpoint` setting into a checkpoint (None: start from fresh weights).

    "latest": the newest version, or None when there is none yet; "none": None; "v0003": that
    version; anything else: a checkpoint folder (or the weights file inside one).
    """
    if checkpoint == "none":
        return None
    if checkpoint == "latest":
        return latest(store, line)
    if _VERSION.match(checkpoint):
        folder = store / line / checkpoint
        if not folder.is_dir():
            have = ", ".join(c.manifest.version for c in versions(store, line)) or "none"
            raise ModelError(
                f"model.checkpoint: no version {checkpoint} of {line} in {store} (have: {have})"
            )
        return Checkpoint(folder, read_manifest(folder))
    folder = Path(checkpoint).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise ModelError(
            f'model.checkpoint: {checkpoint} is not "latest", "none", a version like v0003 '
            "or a checkpoint folder"
        )
    return Checkpoint(folder, read_manifest(folder))


def load_into(model: keras.Model, checkpoint: Checkpoint, line: str) -> None:
    """Verify `checkpoint` belongs to `line` and is intact, then load its weights."""
    manifest = checkpoint.manifest
    if manifest.model_line != line:
        raise ModelError(
            f"checkpoint {checkpoint.folder} is for model line {manifest.model_line}, not {line}; "
            f'set model.line = "{manifest.model_line}" or pick another checkpoint'
        )
    if not checkpoint.weights.is_file():
        raise ModelError(f"checkpoint {checkpoint.folder} has no {WEIGHTS_FILE}")
    if sha256_of(checkpoint.weights) != manifest.weights_sha256:
        raise ModelError(
            f"checkpoint {checkpoint.folder}: {WEIGHTS_FILE} does not match its manifest's "
            "SHA-256 (truncated or replaced); delete the folder or republish it"
        )
    load_weights_strictly(model, checkpoint.weights, f"checkpoint {checkpoint.folder}")
