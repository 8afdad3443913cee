"""The model store: checkpoints on disk, one folder per model line and version.

    <store>/<model line>/<version>/model.weights.h5
    <store>/<model line>/<version>/manifest.json

Versions are `v0001`, `v0002`, ... in publishing order (ordered by number, so v10000 follows
v9999); the manifest says which line the weights belong to, how many batches trained them,
their size and SHA-256, so a loader can refuse a file that is not what it claims before
touching the model. A version folder is written under a temporary name and renamed into place,
so a watcher never sees half a checkpoint, and a version is never overwritten.

The store may be a folder shared with other machines, so everything in it is untrusted input:
nothing inside it is reached through a symbolic link (the store folder itself may be one),
manifests are small regular files, weights are regular files of a plausible size whose SHA-256
matches, and a damaged version is skipped with a warning instead of hiding the good ones.
Everything here is safe to call from any thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from agent.errors import ModelError
from agent.nets.registry import LINE_NAMES, LINES, OUTPUT_NAMES
from agent.weights import load_weights_strictly, one_line

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
MANIFEST_FILE = "manifest.json"
MANIFEST_LIMIT = 64 * 1024
"""Bytes; a manifest is a few hundred, so anything near this is not one."""
UNKNOWN_MODEL_WEIGHTS_LIMIT = 2 << 30
"""Bytes; the most a weights file may have when the model is not known yet (in `latest`)."""

_SHA256_HEX = frozenset("0123456789abcdef")
_FIELDS = ("model_line", "version", "batches", "created", "weights_sha256", "input_shape")
_PUBLISH_ATTEMPTS = 100
_HASH_CACHE_SIZE = 16
# O_NOFOLLOW refuses a link as the last path component; O_NONBLOCK keeps a FIFO from blocking
# the open (it is then refused as not a regular file). Both are absent on Windows.
SAFE_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


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


# --- reading ---------------------------------------------------------------------------------


def read_manifest(folder: Path) -> Manifest:
    """Parse and check `folder/manifest.json`; a `ModelError` names what is wrong.

    When `folder` is named like a version, the manifest's version must be that name.
    """
    path = folder / MANIFEST_FILE
    what = f"checkpoint {folder}"
    with open_regular(path, what, missing="it is not a Charles checkpoint") as (stream, info):
        size = info.st_size
        if size > MANIFEST_LIMIT:
            raise _bad_manifest(path, f"it is {size} bytes, far too big for a manifest")
        raw = stream.read(MANIFEST_LIMIT + 1)
    if len(raw) > MANIFEST_LIMIT:
        raise _bad_manifest(path, "it is far too big for a manifest")
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
            path, f"model_line {_show(line)} is not a known line ({', '.join(LINE_NAMES)})"
        )
    version = data["version"]
    if not isinstance(version, str) or version_number(version) is None:
        raise _bad_manifest(path, f"version {_show(version)} is not like v0003")
    batches = data["batches"]
    if not _is_count(batches):
        raise _bad_manifest(path, f"batches {_show(batches)} is not a whole number >= 0")
    sha = data["weights_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha.lower()) <= _SHA256_HEX):
        raise _bad_manifest(path, f"weights_sha256 {_show(sha)} is not 64 hex digits")
    shape = data["input_shape"]
    expected = LINES[line].input_shape
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise _bad_manifest(path, f"input_shape {_show(shape)} is not a list of sizes")
    if tuple(shape) != expected:
        raise _bad_manifest(path, f"input_shape {_show(shape)} is not {line}'s {list(expected)}")
    size = data.get("weights_bytes")
    if size is not None and not _is_count(size):
        raise _bad_manifest(path, f"weights_bytes {_show(size)} is not a whole number >= 0")
    created, note = data["created"], data.get("note", "")
    if not isinstance(created, str) or not isinstance(note, str):
        raise _bad_manifest(path, "created and note must be text")
    loss = data.get("loss", {})
    if not (isinstance(loss, dict) and all(_is_finite_number(v) for v in loss.values())):
        raise _bad_manifest(path, f"loss {_show(loss)} is not an object of finite numbers")
    outputs = data.get("outputs", list(OUTPUT_NAMES))
    if outputs != list(OUTPUT_NAMES):
        raise _bad_manifest(path, f"outputs {_show(outputs)} are not {line}'s {list(OUTPUT_NAMES)}")
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


def _is_count(value: object) -> bool:
    # Bounded: a batch count is also a TensorFlow int64 step counter.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too big for a float
        return False


def _show(value: object) -> str:
    """A value from a file, quoted and short enough for a one-line message."""
    return one_line(repr(value), 40)


def _bad_manifest(path: Path, problem: str) -> ModelError:
    return ModelError(
        f"checkpoint manifest {path} is unreadable: {problem}; republish the checkpoint or "
        "delete its folder"
    )


@contextmanager
def open_regular(path: Path, what: str, missing: str) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open `path` for reading without following a link or blocking on a FIFO.

    Yields the binary stream and its `fstat`; refuses anything but a regular file with a
    `ModelError` that starts with `what`; `missing` says what a missing file means.
    """
    if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():
        raise _link_error(path, what)
    try:
        fd = os.open(path, SAFE_OPEN_FLAGS)
    except FileNotFoundError:
        raise ModelError(f"{what} has no {path.name}; {missing}") from None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink():
            raise _link_error(path, what) from None
        raise ModelError(f"{what}: cannot read {path.name} ({error.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ModelError(f"{what}: {path.name} is not a regular file; republish it")
    with os.fdopen(fd, "rb") as stream:
        yield stream, info


def _link_error(path: Path, what: str) -> ModelError:
    return ModelError(
        f"{what}: {path.name} is a symbolic link, which the model store never follows; "
        "replace it with the real file or folder"
    )


# --- verifying weights -----------------------------------------------------------------------

_FileKey = tuple[str, int, int, int, int]
"""(path, device, inode, size, mtime_ns): changes whenever the file could have changed."""
_hash_cache: OrderedDict[_FileKey, str] = OrderedDict()
_hash_lock = threading.Lock()


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
    with open_regular(path, what, missing="republish it or delete the folder") as (stream, info):
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
        with _hash_lock:
            sha = _hash_cache.get(key)
        if sha is None:
            sha = _hash_stream(stream)
            with _hash_lock:
                _hash_cache[key] = sha
                while len(_hash_cache) > _HASH_CACHE_SIZE:
                    _hash_cache.popitem(last=False)
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


# --- finding checkpoints ---------------------------------------------------------------------

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(message: str) -> None:
    """Log a store problem once per process: a watcher polling the store must not flood."""
    with _warned_lock:
        if message in _warned:
            return
        if len(_warned) > 1000:
            _warned.clear()
        _warned.add(message)
    log.warning("%s", message)


def _scan(store: Path, line: str) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints of `line` whose manifests are sound, by version number; and the problems of
    the version folders skipped (each also logged once)."""
    root = store / line
    if root.is_symlink():
        problem = str(_link_error(root, f"model store {store}"))
        _warn_once(f"model store: skipping {line}: {problem}")
        return [], [problem]
    if not root.is_dir():
        return [], []
    try:
        entries = list(root.iterdir())
    except OSError as error:
        raise ModelError(f"model store {root} cannot be read ({error.strerror})") from None
    numbered = sorted(
        (number, entry) for entry in entries if (number := version_number(entry.name)) is not None
    )
    found: list[Checkpoint] = []
    problems: list[str] = []
    for _, folder in numbered:
        try:
            found.append(checkpoint_in(folder, line))
        except ModelError as error:
            problems.append(str(error))
            _warn_once(f"model store: skipping {folder.name} of {line}: {error}")
    return found, problems


def checkpoint_in(folder: Path, line: str) -> Checkpoint:
    """The checkpoint in the store's version folder `folder` of `line`, its manifest checked."""
    if folder.is_symlink():
        raise _link_error(folder, f"model store {folder.parent}")
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder; delete it")
    manifest = read_manifest(folder)
    if manifest.model_line != line:
        raise ModelError(
            f"checkpoint {folder} sits in the {line} folder but its manifest says "
            f"{manifest.model_line}; move or delete it"
        )
    return Checkpoint(folder, manifest)


def versions(store: Path, line: str) -> list[Checkpoint]:
    """Checkpoints of `line` with sound manifests, oldest first (weights not hashed).

    A version folder that is a link, or whose manifest is unreadable, is skipped with one
    logged warning.
    """
    return _scan(store, line)[0]


def latest(store: Path, line: str, *, parameters: int | None = None) -> Checkpoint | None:
    """The newest intact checkpoint of `line` (weights checked), or None when there is none.

    A damaged newer version is skipped with one logged warning, so a half-copied or corrupt
    upload never hides the last good one. When versions exist but none is intact, that is an
    error, not None: None means "start from fresh weights", which must never happen by accident.
    `parameters` (the model's parameter count, when known) bounds the weights' size.
    """
    found, problems = _scan(store, line)
    for checkpoint in reversed(found):
        try:
            verify_weights(checkpoint, parameters)
        except ModelError as error:
            problems.append(str(error))
            _warn_once(f"model store: skipping {checkpoint.name}: {error}")
            continue
        return checkpoint
    if problems:
        raise ModelError(
            f'model.checkpoint = "latest": no intact checkpoint of {line} in {store} '
            f"({len(problems)} damaged, e.g. {one_line(problems[-1], 300)}); delete or "
            'republish them, or set model.checkpoint = "none"'
        )
    return None


def resolve(
    store: Path, line: str, checkpoint: str, *, parameters: int | None = None
) -> Checkpoint | None:
    """Turn the `model.checkpoint` setting into a checkpoint (None: start from fresh weights).

    "latest": the newest intact version, or None when there is none yet; "none": None;
    "v0003": that version of `line` in the store; anything else: the path of a checkpoint
    folder or of the model.weights.h5 inside one (any other file is refused).
    """
    if checkpoint == "none":
        return None
    if checkpoint == "latest":
        return latest(store, line, parameters=parameters)
    if version_number(checkpoint) is not None:
        folder = store / line / checkpoint
        if not (folder.is_dir() or folder.is_symlink()):
            have = ", ".join(c.manifest.version for c in versions(store, line)) or "none"
            raise ModelError(
                f"model.checkpoint: no version {checkpoint} of {line} in {store} (have: {have})"
            )
        return checkpoint_in(folder, line)
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return Checkpoint(path, read_manifest(path))
    if path.name == WEIGHTS_FILE and path.parent.is_dir():
        return Checkpoint(path.parent, read_manifest(path.parent))
    if path.exists() or path.is_symlink():
        raise ModelError(
            f"model.checkpoint: {path} is a file, not a checkpoint; a checkpoint is a folder "
            f"holding {WEIGHTS_FILE} and {MANIFEST_FILE}: give that folder or its {WEIGHTS_FILE}"
        )
    raise ModelError(
        f'model.checkpoint: {checkpoint} is not "latest", "none", a version like v0003 '
        "or a checkpoint folder"
    )


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


# --- publishing ------------------------------------------------------------------------------


def publish(
    model: keras.Model,
    store: Path,
    line: str,
    batches: int,
    note: str = "",
    loss: dict[str, float] | None = None,
) -> Checkpoint:
    """Save `model`'s weights as the next version of `line`, atomically.

    `loss` (per head, finite numbers) goes into the manifest beside the batch count.

    Only the network's weights are saved (no optimizer state). Concurrent publishers (threads
    or processes, on this machine or sharing the folder) each get their own version: on a
    collision the next number is taken; an existing version is never overwritten. Folders get
    mode 0o755 and files 0o644, less the umask.
    """
    if line not in LINE_NAMES:
        raise ModelError(f"cannot publish as unknown model line '{line}'")
    if not _is_count(batches):
        raise ValueError(f"batches must be a whole number >= 0, not {batches!r}")
    takes = tuple(int(d) for d in model.input_shape[1:])
    if takes != LINES[line].input_shape:
        raise ModelError(f"cannot publish {model.name} as {line}: it takes input {list(takes)}")
    _refuse_non_finite(model, line)
    root = store / line
    if root.is_symlink():
        raise _link_error(root, f"model store {store}")
    root.mkdir(parents=True, exist_ok=True)
    staging = _make_staging_folder(root)
    try:
        weights = staging / WEIGHTS_FILE
        model.save_weights(str(weights))
        _drop_optimizer_state(weights)
        weights.chmod(weights.stat().st_mode & 0o644)  # h5py creates 0o666 less the umask
        fsync_path(weights)
        return _rename_into_place(
            staging,
            root,
            line=line,
            batches=batches,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            weights_sha256=sha256_of(weights),
            weights_bytes=weights.stat().st_size,
            input_shape=takes,
            note=note,
            loss=tuple((name, float(value)) for name, value in (loss or {}).items()),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def prune(store: Path, line: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions of `line` (never fewer than two); returns
    the names removed, oldest first.

    A version is first renamed to a hidden name (one atomic step, so a scanner sees it either
    whole or not at all), then deleted. A version another pruner took first is skipped.
    """
    keep = max(2, keep)
    root = store / line
    found = versions(store, line)
    removed = []
    for checkpoint in found[: max(0, len(found) - keep)]:
        doomed = root / f".pruned-{checkpoint.folder.name}-{secrets.token_hex(4)}"
        try:
            os.rename(checkpoint.folder, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(checkpoint.folder.name)
    return removed


def _refuse_non_finite(model: keras.Model, line: str) -> None:
    """A diverged trainer must not publish: loaders would refuse its weights anyway."""
    for variable in model.weights:
        values = np.asarray(variable.numpy())
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ModelError(
                f"cannot publish {line}: its weight {variable.path} holds NaN or inf "
                "(training diverged?)"
            )


def _make_staging_folder(root: Path) -> Path:
    """A new hidden folder in `root` (never listed as a version), mode 0o755 less the umask."""
    while True:
        staging = root / f".staging-{secrets.token_hex(8)}"
        try:
            staging.mkdir(mode=0o755)
        except FileExistsError:
            continue
        return staging


def _drop_optimizer_state(weights: Path) -> None:
    """Rewrite `weights` without the optimizer group Keras saves for a compiled model.

    A checkpoint is the network only: the strict loader refuses arrays the network lacks, and
    optimizer state would triple the file.
    """
    import h5py

    with h5py.File(weights, "r") as source:
        if "optimizer" not in source:
            return
        slim = weights.with_name(f".slim-{weights.name}")
        with h5py.File(slim, "w") as target:
            for key, value in source.attrs.items():
                target.attrs[key] = value
            for name in source:
                if name != "optimizer":
                    source.copy(source[name], target, name=name)
    os.replace(slim, weights)


def _rename_into_place(staging: Path, root: Path, line: str, **fields: Any) -> Checkpoint:
    """Write the manifest and rename `staging` to the next free version of `root`."""
    number = _next_number(root)
    for _ in range(_PUBLISH_ATTEMPTS):
        version = version_name(number)
        manifest = Manifest(model_line=line, version=version, **fields)
        _write_manifest(staging / MANIFEST_FILE, manifest)
        target = root / version
        # rename() onto an existing empty folder would replace it, so look first; a racing
        # publisher's folder is never empty, so rename() fails on it instead.
        if not os.path.lexists(target):
            try:
                os.rename(staging, target)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                fsync_path(root)
                return Checkpoint(target, manifest)
        log.info("model store: %s of %s was taken meanwhile; trying the next", version, line)
        number = max(number + 1, _next_number(root))
    raise ModelError(f"could not publish {line} in {root}: no free version after many tries")


def _next_number(root: Path) -> int:
    taken = (version_number(entry.name) for entry in root.iterdir())
    return max((n for n in taken if n is not None), default=0) + 1


def _write_manifest(path: Path, manifest: Manifest) -> None:
    fields = {
        **asdict(manifest),
        "input_shape": list(manifest.input_shape),
        "loss": manifest.loss_by_name,
        "outputs": list(manifest.outputs),
    }
    text = json.dumps(fields, indent=2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
    with os.fdopen(fd, "wb") as stream:
        stream.write((text + "\n").encode("utf-8"))
        stream.flush()
        os.fsync(stream.fileno())


def fsync_path(path: Path) -> None:
    """Flush `path` (a file, or a folder's entries) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # folders cannot be fsynced on Windows
    finally:
        os.close(fd)
