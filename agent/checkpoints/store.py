"""The model store: checkpoints on disk, one folder per model line and version.

    <store>/<model line>/<version>/model.weights.h5
    <store>/<model line>/<version>/manifest.json

Versions are `v0001`, `v0002`, ... in publishing order (ordered by number, so v10000 follows
v9999); the manifest says which line the weights belong to, how many batches trained them,
their size and SHA-256, so a loader can refuse a file that is not what it claims before
touching the model. A version folder is written under a temporary name and renamed into place,
so a watcher never sees half a checkpoint, and a version is never overwritten.

Publishing survives a full disk: the weights file is built in memory (agent.nets.weights) and
written with plain `os.write`, after a check that the store has room for it, then fsynced,
manifest and folder too, before the rename; a publish that cannot complete leaves nothing
behind but the versions that were there. One trainer publishes into a line of a store at a
time: it holds `PublishingLock` (an OS file lock, so a trainer killed with -9 holds nothing),
and under it removes what an interrupted publish or prune left (hidden `.staging-*` and
`.pruned-*` folders).

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
import socket
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, TypeVar

import numpy as np

from agent.errors import ModelError, one_line, quoted, warn_once
from agent.files import (
    CREATE_FLAGS,
    READ_FLAGS,
    FileIsLink,
    FileMissing,
    FileNotRegular,
    FileRefused,
    FileTooLarge,
    FileUnopenable,
    open_regular,
    open_regular_file,
    read_regular_file,
)
from agent.nets.registry import LINE_NAMES, LINES, OUTPUT_NAMES
from agent.nets.weights import (
    Shape,
    check_shapes,
    finite_array_shapes,
    load_weights_strictly,
    weight_shapes,
    weights_image,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
MANIFEST_FILE = "manifest.json"
MANIFEST_LIMIT = 64 * 1024
"""Bytes; a manifest is a few hundred, so anything near this is not one."""
UNKNOWN_MODEL_WEIGHTS_LIMIT = 2 << 30
"""Bytes; the most a weights file may have when the model is not known yet (in `latest`)."""

LOCK_FILE = ".trainer.lock"
"""In a line's folder: held (an OS file lock) by the one trainer publishing that line."""
STAGING_PREFIX = ".staging-"
PRUNED_PREFIX = ".pruned-"
LEFTOVER_PREFIXES = (STAGING_PREFIX, PRUNED_PREFIX)
"""Hidden folders of a publish or prune in progress; left behind only by one that was killed."""
PUBLISH_RESERVE = 256 << 10
"""Bytes a publish wants free beyond its weights file: manifest, folder entries, slack."""

_SHA256_HEX = frozenset("0123456789abcdef")
_FIELDS = ("model_line", "version", "batches", "created", "weights_sha256", "input_shape")
_PUBLISH_ATTEMPTS = 100
_HASH_CACHE_SIZE = 16
_HOLDER_LIMIT = 4096
_LOCK_FLAGS = READ_FLAGS | os.O_RDWR | os.O_CREAT
"""Open the lock file for reading and writing, created when missing; never through a link."""
"""Bytes of a lock file read to say who holds it."""
_ROOM_ERRORS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


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
    try:
        raw = read_regular_file(path, MANIFEST_LIMIT)
    except FileTooLarge as error:
        size = "" if error.size is None else f"{error.size} bytes, "
        raise _bad_manifest(path, f"it is {size}far too big for a manifest") from None
    except FileRefused as error:
        raise _refused(error, path, what, missing="it is not a Charles checkpoint") from None
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
    if not _is_count(batches):
        raise _bad_manifest(path, f"batches {quoted(batches)} is not a whole number >= 0")
    sha = data["weights_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha.lower()) <= _SHA256_HEX):
        raise _bad_manifest(path, f"weights_sha256 {quoted(sha)} is not 64 hex digits")
    shape = data["input_shape"]
    expected = LINES[line].input_shape
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise _bad_manifest(path, f"input_shape {quoted(shape)} is not a list of sizes")
    if tuple(shape) != expected:
        raise _bad_manifest(path, f"input_shape {quoted(shape)} is not {line}'s {list(expected)}")
    size = data.get("weights_bytes")
    if size is not None and not _is_count(size):
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


def _bad_manifest(path: Path, problem: str) -> ModelError:
    return ModelError(
        f"checkpoint manifest {path} is unreadable: {problem}; republish the checkpoint or "
        "delete its folder"
    )


@contextmanager
def open_store_file(
    path: Path, what: str, missing: str
) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open `path` for reading without following a link or blocking on a FIFO.

    Yields the binary stream and its `fstat`; refuses anything but a regular file with a
    `ModelError` that starts with `what`; `missing` says what a missing file means.
    """
    try:
        stream, info = open_regular_file(path)
    except FileRefused as error:
        raise _refused(error, path, what, missing) from None
    with stream:
        yield stream, info


def _refused(refusal: FileRefused, path: Path, what: str, missing: str) -> ModelError:
    """`agent.files`' refusal to open `path` as a one-line `ModelError` starting with `what`."""
    if isinstance(refusal, FileIsLink):
        return _link_error(path, what)
    if isinstance(refusal, FileMissing):
        return ModelError(f"{what} has no {path.name}; {missing}")
    if isinstance(refusal, FileNotRegular):
        return ModelError(f"{what}: {path.name} is not a regular file; republish it")
    return ModelError(f"{what}: cannot read {path.name} ({refusal.reason})")


def _link_error(path: Path, what: str) -> ModelError:
    return ModelError(
        f"{what}: {path.name} is a symbolic link, which the model store never follows; "
        "replace it with the real file or folder"
    )


# --- verifying weights -----------------------------------------------------------------------

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


_line_shapes: dict[str, Counter[Shape]] = {}
_line_shapes_lock = threading.Lock()


def line_weight_shapes(line: str) -> Counter[Shape]:
    """The shapes of the weights of a `line` network, built once per process to learn them.

    Building runs TensorFlow: a caller that sets TensorFlow's thread pools does so first.
    """
    with _line_shapes_lock:
        shapes = _line_shapes.get(line)
        if shapes is None:
            shapes = _line_shapes[line] = weight_shapes(LINES[line].build("none"))
        return shapes


# --- finding checkpoints ---------------------------------------------------------------------


def _scan(store: Path, line: str) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints of `line` whose manifests are sound, by version number; and the problems of
    the version folders skipped (each also logged once)."""
    root = store / line
    if root.is_symlink():
        problem = str(_link_error(root, f"model store {store}"))
        warn_once(log, f"model store: skipping {line}: {problem}")
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
            warn_once(log, f"model store: skipping {folder.name} of {line}: {error}")
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


def latest(
    store: Path,
    line: str,
    *,
    parameters: int | None = None,
    fits: keras.Model | None = None,
    check_fit: bool = True,
) -> Checkpoint | None:
    """The newest intact checkpoint of `line`, or None when there is none.

    Intact: a sound manifest, weights of its size and SHA-256, readable HDF5 of finite arrays
    (cached per file, like the hash) and arrays that fit the network: those of `fits` when
    given, else of a `line` network built once per process to learn them (`check_fit=False`
    skips that, for a caller that checks the fit itself once it has built the network).
    A damaged newer version is skipped with one logged warning, so a half-copied, corrupt or
    diverged upload never hides the last good one. When versions exist but none is intact,
    that is an error, not None: None means "start from fresh weights", which must never happen
    by accident. `parameters` (the model's parameter count, when known) bounds the weights'
    size. A store path that exists but is not a folder is an error.
    """
    require_store_folder(store)
    root = store / line
    if root.exists() and not root.is_symlink() and not root.is_dir():
        raise ModelError(f"model store {store}: {line} is not a folder; move it away")
    found, problems = _scan(store, line)
    expected = weight_shapes(fits) if fits is not None else None
    if parameters is None and fits is not None:
        parameters = fits.count_params()
    for checkpoint in reversed(found):
        try:
            verify_weights(checkpoint, parameters)
            shapes = verify_contents(checkpoint)
            if expected is None and check_fit:
                expected = line_weight_shapes(line)
            if expected is not None:
                check_shapes(expected, shapes, f"checkpoint {checkpoint.folder}", line)
        except ModelError as error:
            problems.append(str(error))
            warn_once(log, f"model store: skipping {checkpoint.name}: {error}")
            continue
        return checkpoint
    if problems:
        raise ModelError(
            f'model.checkpoint = "latest": no intact checkpoint of {line} in {store} '
            f"({len(problems)} damaged, e.g. {one_line(problems[-1], 300)}); delete or "
            'republish them, or set model.checkpoint = "none"'
        )
    return None


def require_store_folder(store: Path) -> None:
    """A one-line `ModelError` when `store` exists but is not a folder (a link to one is fine;
    one that does not exist yet is an empty store)."""
    if store.exists() and not store.is_dir():
        raise ModelError(
            f"model store {store} is not a folder; set model.store (--store) to a folder "
            "(a trainer creates it when it first publishes)"
        )


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
        require_store_folder(store)
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
    """Save `model`'s weights as the next version of `line`, atomically and durably.

    `loss` (per head, finite numbers) goes into the manifest beside the batch count.

    Only the network's weights are saved (no optimizer state), built in memory and written
    with plain file writes, weights and manifest fsynced before the rename and the folder after
    it: when this returns, the version is on disk. A publish that cannot complete (a full disk,
    a store gone read-only) raises a one-line `ModelError` and leaves the store as it was: its
    staging folder is removed and no version is touched. Concurrent publishers
    (threads or processes, on this machine or sharing the folder) each get their own version:
    on a collision the next number is taken; an existing version is never overwritten. Folders
    get mode 0o755 and files 0o644, less the umask.
    """
    if line not in LINE_NAMES:
        raise ModelError(f"cannot publish as unknown model line '{line}'")
    if not _is_count(batches):
        raise ValueError(f"batches must be a whole number >= 0, not {batches!r}")
    takes = tuple(int(d) for d in model.input_shape[1:])
    if takes != LINES[line].input_shape:
        raise ModelError(f"cannot publish {model.name} as {line}: it takes input {list(takes)}")
    _refuse_non_finite(model, line)
    data = weights_image(model)
    root = line_folder(store, line, probe=False)
    require_room(root, len(data) + PUBLISH_RESERVE, line)
    staging: Path | None = None
    try:
        staging = _make_staging_folder(root)
        _write_new_file(staging / WEIGHTS_FILE, data)
        return _rename_into_place(
            staging,
            root,
            line=line,
            batches=batches,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            weights_sha256=hashlib.sha256(data).hexdigest(),
            weights_bytes=len(data),
            input_shape=takes,
            note=note,
            loss=tuple((name, float(value)) for name, value in (loss or {}).items()),
        )
    except OSError as error:
        raise _publish_failed(root, line, error) from None
    finally:
        if staging is not None:  # gone already after a successful rename
            shutil.rmtree(staging, ignore_errors=True)


def line_folder(store: Path, line: str, *, probe: bool = True) -> Path:
    """`store/line`, created when missing: a one-line `ModelError` unless it is a folder (and,
    with `probe`, one this process can create things in: checked by creating and removing a
    staging folder, so a read-only store is refused before a trainer starts, not at its first
    publish)."""
    require_store_folder(store)
    root = store / line
    if root.is_symlink():
        raise _link_error(root, f"model store {store}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass  # not a folder: said below
    except OSError as error:
        raise _not_writable(store, error) from None
    if not root.is_dir():
        raise ModelError(f"model store {store}: {root.name} is not a folder; move it away")
    if probe:
        try:
            _make_staging_folder(root).rmdir()
        except OSError as error:
            raise _not_writable(store, error) from None
    return root


def require_room(root: Path, needed: int, line: str) -> None:
    """A one-line `ModelError` unless the file system of `root` has `needed` bytes free."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return  # cannot tell; the writes themselves will say
    if free < needed:
        raise ModelError(
            f"cannot publish {line} into model store {root.parent}: {_megabytes(free)} free, "
            f"a checkpoint needs {_megabytes(needed)}; free some space there (the versions "
            "already published are intact)"
        )


def weights_bytes_estimate(parameters: int) -> int:
    """About how many bytes a checkpoint of a `parameters`-parameter network takes (float32)."""
    return parameters * 4 + PUBLISH_RESERVE


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def _not_writable(store: Path, error: OSError | ValueError) -> ModelError:
    why = getattr(error, "strerror", None) or error  # ValueError: a NUL in the path
    if getattr(error, "errno", None) in _ROOM_ERRORS:
        return ModelError(f"model store {store} is full ({why}); free some space there")
    return ModelError(
        f"model store {store} is not a folder Charles can write to "
        f"({one_line(why, 80)}); set model.store to a writable folder"
    )


def _publish_failed(root: Path, line: str, error: OSError) -> ModelError:
    if error.errno in _ROOM_ERRORS:
        advice = "free some space there"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "make it writable or set model.store to a writable folder"
    else:
        advice = "check the disk"
    return ModelError(
        f"could not publish {line} into model store {root.parent}: "
        f"{one_line(error.strerror or error, 80)}; {advice} (the versions already published are "
        "intact)"
    )


def prune(store: Path, line: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions of `line` (never fewer than two); returns
    the names removed, oldest first. Call it only after a publish that succeeded.

    A version is first renamed to a hidden name (one atomic step, so a scanner sees it either
    whole or not at all), then deleted. A version another pruner took first is skipped.
    """
    keep = max(2, keep)
    root = store / line
    found = versions(store, line)
    removed = []
    for checkpoint in found[: max(0, len(found) - keep)]:
        doomed = root / f"{PRUNED_PREFIX}{checkpoint.folder.name}-{secrets.token_hex(4)}"
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
        staging = root / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        try:
            staging.mkdir(mode=0o755)
        except FileExistsError:
            continue
        return staging


_WRITE_CHUNK = 16 << 20


def _write_new_file(path: Path, data: bytes) -> None:
    """Create `path` (mode 0o644 less the umask) holding `data`, flushed to disk.

    Plain writes: a full disk is an `OSError` here, never a half-written file that a library
    still holds open.
    """
    fd = os.open(path, CREATE_FLAGS, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:_WRITE_CHUNK]) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_into_place(staging: Path, root: Path, line: str, **fields: Any) -> Checkpoint:
    """Write the manifest and rename `staging` to the next free version of `root`."""
    number = _next_number(root)
    for _ in range(_PUBLISH_ATTEMPTS):
        version = version_name(number)
        manifest = Manifest(model_line=line, version=version, **fields)
        _write_manifest(staging / MANIFEST_FILE, manifest)
        fsync_folder(staging)
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
                fsync_folder(root)
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
    text = json.dumps(fields, indent=2) + "\n"
    path.unlink(missing_ok=True)  # written again when the version number was taken
    _write_new_file(path, text.encode("utf-8"))


def fsync_folder(folder: Path) -> None:
    """Flush `folder`'s entries to disk; an `OSError` when the disk says it failed.

    Windows cannot fsync a folder, and some file systems refuse to (EINVAL): nothing to do
    there. An I/O error is raised: a publish must not count as done when it is not on disk.
    """
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# --- one publisher per line ------------------------------------------------------------------


class PublishingLock:
    """The right to publish `line` into `store` (and to tidy up after a killed publisher).

    An OS file lock on `store/line/.trainer.lock` (`flock` on POSIX, `msvcrt.locking` on
    Windows), taken without waiting: the kernel releases it when its holder exits in any way,
    kill -9 included, so a dead trainer never leaves a stuck lock, and no stale-lock guessing
    is needed. The file itself stays; it names its holder (process, host, start), for the
    refusal the next trainer prints. Opened without following links and refused unless a
    regular file, like everything in the store.
    """

    def __init__(self, store: Path, line: str) -> None:
        self.store = store
        self.line = line
        self.root = line_folder(store, line, probe=False)  # opening the lock file writes
        self.path = self.root / LOCK_FILE
        self._fd: int | None = self._open()
        try:
            if not _try_lock(self._fd):
                raise ModelError(
                    f"model store {store} already has a trainer publishing {line} "
                    f"({self._holder()}); stop it first or set model.store to another folder "
                    "(one trainer per model line and store)"
                )
            self._name_holder()
        except BaseException:
            self.release()
            raise

    def _open(self) -> int:
        what = f"model store {self.store}"
        try:
            fd, _ = open_regular(self.path, _LOCK_FLAGS, 0o644)
        except FileIsLink:
            raise _link_error(self.path, what) from None
        except FileNotRegular:
            raise ModelError(f"{what}: {self.path.name} is not a regular file; delete it") from None
        except (FileMissing, FileUnopenable) as error:
            raise _not_writable(self.store, error.error) from None
        return fd

    def _holder(self) -> str:
        """Who holds the lock, as its holder wrote it; the file's content is untrusted."""
        assert self._fd is not None
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            holder = json.loads(os.read(self._fd, _HOLDER_LIMIT).decode("utf-8"))
            return one_line(
                f"pid {int(holder['pid'])} on {holder['host']} since {holder['since']}", 160
            )
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def _name_holder(self) -> None:
        assert self._fd is not None
        text = json.dumps({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })  # fmt: skip
        try:  # best effort: a full disk must not stop a trainer that holds the lock
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, text.encode("utf-8"))
        except OSError:
            pass

    def remove_leftovers(self) -> list[str]:
        """Delete what killed publishers and pruners left in the line's folder (hidden
        `.staging-*` and `.pruned-*` entries, Charles's own names only); the names removed.

        Only the holder may: no other trainer is publishing or pruning this line meanwhile.
        """
        if self._fd is None:
            raise RuntimeError("the publishing lock is not held")
        removed = []
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        for entry in entries:
            if not entry.name.startswith(LEFTOVER_PREFIXES):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)  # a link or file by that name: never followed
            except OSError as error:
                log.warning("model store: could not remove %s (%s)", entry.path, error)
                continue
            removed.append(entry.name)
        return sorted(removed)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None

    def __enter__(self) -> PublishingLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    """Lock `fd`'s file for this process, without waiting; False when another holds it."""
    if os.name == "nt":
        import msvcrt

        # A byte far past the holder's text, which readers must still be able to read.
        os.lseek(fd, 1 << 20, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True
