"""Which checkpoint: the versions of a line in the store, the newest intact one, and the
`model.checkpoint` setting turned into one.

A version folder that is a link, or whose manifest is unreadable, is skipped with one logged
warning, and `latest` skips a damaged newer version the same way, so a half-copied, corrupt or
diverged upload never hides the last good one. Everything here is safe to call from any
thread.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from agent.checkpoints.load import verify_contents, verify_weights
from agent.checkpoints.manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    read_manifest,
    version_number,
)
from agent.checkpoints.store_files import link_error
from agent.errors import ModelError, one_line, warn_once
from agent.nets.registry import LINES
from agent.nets.weights import Shape, check_shapes, weight_shapes

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def _scan(store: Path, line: str) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints of `line` whose manifests are sound, by version number; and the problems of
    the version folders skipped (each also logged once)."""
    root = store / line
    if root.is_symlink():
        problem = str(link_error(root, f"model store {store}"))
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
        raise link_error(folder, f"model store {folder.parent}")
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
