"""Publishing checkpoints into the model store, and pruning old ones: the trainer's side.

A version folder is written under a hidden temporary name and renamed into place, so a watcher
never sees half a checkpoint, and a version is never overwritten. Publishing survives a full
disk: the weights file is built in memory (agent.nets.weights) and written with plain
`os.write`, after a check that the store has room for it, then fsynced, manifest and folder
too, before the rename; a publish that cannot complete leaves nothing behind but the versions
that were there. What a killed publish or prune leaves (hidden `.staging-*` and `.pruned-*`
folders) is removed by the next holder of the line's `PublishingLock`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.checkpoints.manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    Manifest,
    is_count,
    manifest_bytes,
    version_name,
    version_number,
)
from agent.checkpoints.resolve import require_store_folder, versions
from agent.checkpoints.store_files import link_error
from agent.errors import ModelError, one_line
from agent.files import CREATE_FLAGS
from agent.nets.registry import LINE_NAMES, LINES
from agent.nets.weights import weights_image

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
PRUNED_PREFIX = ".pruned-"
LEFTOVER_PREFIXES = (STAGING_PREFIX, PRUNED_PREFIX)
"""Hidden folders of a publish or prune in progress; left behind only by one that was killed."""
PUBLISH_RESERVE = 256 << 10
"""Bytes a publish wants free beyond its weights file: manifest, folder entries, slack."""

_PUBLISH_ATTEMPTS = 100
_ROOM_ERRORS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


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
    if not is_count(batches):
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
        raise link_error(root, f"model store {store}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass  # not a folder: said below
    except OSError as error:
        raise not_writable(store, error) from None
    if not root.is_dir():
        raise ModelError(f"model store {store}: {root.name} is not a folder; move it away")
    if probe:
        try:
            _make_staging_folder(root).rmdir()
        except OSError as error:
            raise not_writable(store, error) from None
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


def not_writable(store: Path, error: OSError | ValueError) -> ModelError:
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
    path.unlink(missing_ok=True)  # written again when the version number was taken
    _write_new_file(path, manifest_bytes(manifest))


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
