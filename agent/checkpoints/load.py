"""The one strict loader: a checkpoint's weights checked against its manifest, then loaded.

Weights are a regular file of the manifest's size, of a plausible size for the network (refused
before anything is hashed), of the manifest's SHA-256, and readable HDF5 of finite,
self-contained arrays; both verdicts are cached by file identity, so a file already checked in
this process costs nothing while it is unchanged. Loading then goes through the strict weight
loader (agent.nets.weights), and a file that changed while it loaded is refused. Everything
here is safe to call from any thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Generic, TypeVar

from agent.checkpoints.manifest import WEIGHTS_FILE, Checkpoint
from agent.checkpoints.store_files import open_store_file
from agent.errors import ModelError
from agent.nets.weights import Shape, finite_array_shapes, load_weights_strictly

if TYPE_CHECKING:
    import keras

UNKNOWN_MODEL_WEIGHTS_LIMIT = 2 << 30
"""Bytes; the most a weights file may have when the model is not known yet (in `latest`)."""

_HASH_CACHE_SIZE = 16


def weights_limit(parameters: int) -> int:
    """The most bytes a weights file of a `parameters`-parameter float32 network may have.

    The file holds 4 bytes per parameter plus HDF5 bookkeeping (about 2 KiB per array); half
    again as much plus 4 MiB leaves room for that and refuses anything absurd before hashing.
    """
    return int(parameters * 4 * 1.5) + (4 << 20)


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return _hash_stream(stream)


def _hash_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


_FileKey = tuple[str, int, int, int, int]
"""(path, device, inode, size, mtime_ns): changes whenever the file could have changed."""


_Verdict = TypeVar("_Verdict")


class _FileVerdicts(Generic[_Verdict]):
    """What reading a file found, by file identity, for the most recent few files.

    Shared by the drive's threads (swap loader, start), hence the lock; bounded so a store
    that keeps changing never grows it.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._verdicts: OrderedDict[_FileKey, _Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _FileKey) -> _Verdict | None:
        with self._lock:
            return self._verdicts.get(key)

    def put(self, key: _FileKey, verdict: _Verdict) -> None:
        with self._lock:
            self._verdicts[key] = verdict
            while len(self._verdicts) > self._size:
                self._verdicts.popitem(last=False)


_hash_cache: _FileVerdicts[str] = _FileVerdicts(_HASH_CACHE_SIZE)


def _file_key(path: Path, info: os.stat_result) -> _FileKey:
    return (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def verify_weights(checkpoint: Checkpoint, parameters: int | None = None) -> _FileKey:
    """Check the weights file is a regular file of the right size and SHA-256.

    `parameters` (the model's parameter count) bounds the size before anything is hashed.
    A file already hashed in this process, unchanged since (same inode, size and mtime), is
    not hashed again. Returns the file's identity, to notice a change while it is loaded.
    """
    manifest = checkpoint.manifest
    path = checkpoint.weights
    what = f"checkpoint {checkpoint.folder}"
    with open_store_file(path, what, missing="republish it or delete the folder") as (stream, info):
        size = info.st_size
        if manifest.weights_bytes is not None and size != manifest.weights_bytes:
            raise ModelError(
                f"{what}: {WEIGHTS_FILE} does not match its manifest's size ({size} bytes, "
                f"not {manifest.weights_bytes}: truncated, replaced or still being copied); "
                "republish it or delete the folder"
            )
        limit = UNKNOWN_MODEL_WEIGHTS_LIMIT if parameters is None else weights_limit(parameters)
        if size > limit:
            needs = "" if parameters is None else f" for a {parameters}-parameter network"
            raise ModelError(
                f"{what}: {WEIGHTS_FILE} is {size} bytes, far more than a weights file can be"
                f"{needs}; delete the folder"
            )
        key = _file_key(path, info)
        sha = _hash_cache.get(key)
        if sha is None:
            sha = _hash_stream(stream)
            _hash_cache.put(key, sha)
    if sha != manifest.weights_sha256:
        raise ModelError(
            f"{what}: {WEIGHTS_FILE} does not match its manifest's SHA-256 (truncated or "
            "replaced); delete the folder or republish it"
        )
    return key


def _current_key(path: Path) -> _FileKey | None:
    try:
        return _file_key(path, path.lstat())
    except OSError:
        return None


_content_cache: _FileVerdicts[list[Shape] | str] = _FileVerdicts(_HASH_CACHE_SIZE)
"""A weights file's array shapes (readable, self-contained, all finite), or why it is not."""


def verify_contents(checkpoint: Checkpoint) -> list[Shape]:
    """Check the weights file is readable HDF5 of finite, self-contained arrays; their shapes.

    Reads every array, so the verdict is cached by file identity as the SHA-256 is: reading
    model_0005's 226 MB again costs nothing while the file is unchanged. Call after
    `verify_weights`, which bounds the size.
    """
    path = checkpoint.weights
    what = f"checkpoint {checkpoint.folder}"
    with open_store_file(path, what, missing="republish it or delete the folder") as (stream, info):
        key = _file_key(path, info)
        verdict = _content_cache.get(key)
        if verdict is None:
            try:
                verdict = finite_array_shapes(stream, f"{what}: {WEIGHTS_FILE}")
            except ModelError as error:
                verdict = str(error)
            _content_cache.put(key, verdict)
    if isinstance(verdict, str):
        raise ModelError(verdict)
    return verdict


def load_into(model: keras.Model, checkpoint: Checkpoint, line: str) -> None:
    """Verify `checkpoint` belongs to `line` and is intact, then load its weights strictly.

    On `ModelError` the model may hold part of the checkpoint: discard it, never drive with it.
    """
    manifest = checkpoint.manifest
    if manifest.model_line != line:
        raise ModelError(
            f"checkpoint {checkpoint.folder} is for model line {manifest.model_line}, not {line}; "
            f'set model.line = "{manifest.model_line}" or pick another checkpoint'
        )
    takes = tuple(int(d) for d in model.input_shape[1:])
    if manifest.input_shape != takes:
        raise ModelError(
            f"checkpoint {checkpoint.folder} was published for input {list(manifest.input_shape)}"
            f" but {model.name} takes {list(takes)}; pick another checkpoint"
        )
    key = verify_weights(checkpoint, parameters=model.count_params())
    load_weights_strictly(model, checkpoint.weights, f"checkpoint {checkpoint.weights}")
    if _current_key(checkpoint.weights) != key:
        raise ModelError(
            f"checkpoint {checkpoint.folder}: {WEIGHTS_FILE} changed while it was loading; "
            "load it again"
        )
