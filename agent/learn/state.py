"""The trainer's own files, beside the model store: what a restart needs besides a checkpoint.

    <state>/<line>/optimizer.npz        Adam's variables at the last publish, with its batch count
    <state>/<line>/loaded-shards.txt    names of the shards already in the buffers
    <state>/<line>/buffers-0.npz, -1    the rotating copy of the buffers (agent.learn.buffers)
    <state>/<line>/tensorboard/         TensorBoard event files

Every file is replaced atomically (a hidden temporary file renamed over it), so `kill -9` at
any moment leaves either the old or the new version, never half of one, and nothing is ever
written through a link. Every file is read as untrusted: never through a link, never from a
FIFO or device, only up to a size limit that follows from what the trainer itself would write
(`SHARDS_LIST_LIMIT`; an optimizer file no larger than the optimizer's own variables). A
damaged, oversized or odd file is ignored with one warning and the trainer goes on without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import one_line
from agent.files import FileRefused, read_regular_file, write_atomically
from agent.learn.buffers import BufferSet
from agent.learn.npz_reader import open_npz
from agent.learn.shard_format import is_shard_name

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.npz"
SHARDS_FILE = "loaded-shards.txt"
SHARDS_LIST_LIMIT = 64 * 1024**2
"""Bytes of loaded-shards.txt: about a million shard names (a name is about 60 bytes)."""
_NAME_CHARS = 1024
"""Characters allowed per variable name in the optimizer file's meta (a real one is < 100)."""


class TrainerState:
    """The state folder of one model line's trainer."""

    def __init__(self, root: Path, line: str) -> None:
        self.folder = root / line
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tensorboard = self.folder / "tensorboard"
        self._shards: set[str] = set()

    # --- optimizer ---------------------------------------------------------------------------

    def save_optimizer(self, optimizer: Any, batches: int) -> None:
        arrays = {f"v{index}": np.asarray(v.numpy()) for index, v in enumerate(optimizer.variables)}
        names = [_name(v) for v in optimizer.variables]
        meta = json.dumps({"batches": batches, "names": names})
        write_atomically(
            self.folder / OPTIMIZER_FILE,
            lambda stream: np.savez(stream, meta=np.array(meta), **arrays),
        )

    def load_optimizer(self, optimizer: Any, batches: int) -> bool:
        """Restore Adam's variables saved at `batches`; False (nothing changed) otherwise.

        The file must be a regular file holding exactly the optimizer's variables (checked
        from the zip directory and array headers before anything is inflated); anything else
        is ignored with one warning.
        """
        path = self.folder / OPTIMIZER_FILE
        if not os.path.lexists(path):
            return False
        variables = list(optimizer.variables)
        try:
            values = _read_optimizer(path, variables, batches)
        except FileRefused as error:
            log.warning("optimizer state %s is unreadable (%s); Adam starts afresh", path, error)
            return False
        if values is None:
            return False  # saved at another batch or for another model: a normal restart
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        log.info("optimizer state restored (batch %d)", batches)
        return True

    # --- shards and buffers ------------------------------------------------------------------

    def loaded_shards(self) -> set[str]:
        """The names in loaded-shards.txt; empty (with one warning) when it is unusable."""
        path = self.folder / SHARDS_FILE
        if not os.path.lexists(path):
            return set()
        try:
            names = _read_shard_names(path)
        except FileRefused as error:
            log.warning(
                "list of loaded shards %s is unusable (%s); every shard in the data folder "
                "is loaded again",
                path,
                error,
            )
            return set()
        self._shards = names
        return set(names)

    def remember_shards(self, names: Iterable[str]) -> None:
        """Note shards now in the buffers; written with the next buffer copy, so the list
        never names a shard whose samples the copy lacks."""
        self._shards.update(names)

    def save_buffers(self, buffers: BufferSet) -> None:
        buffers.save(self.folder)
        text = "".join(f"{name}\n" for name in sorted(self._shards))
        write_atomically(self.folder / SHARDS_FILE, lambda s: s.write(text.encode("utf-8")))

    def load_buffers(self, buffers: BufferSet) -> bool:
        return buffers.load(self.folder)


def _read_shard_names(path: Path) -> set[str]:
    """The shard names listed in `path`, one a line; FileRefused for anything else."""
    try:
        text = read_regular_file(path, SHARDS_LIST_LIMIT).decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused("it is not UTF-8 text") from None
    names = {line for line in text.split("\n") if line}
    odd = next((name for name in names if not _is_plain_shard_name(name)), None)
    if odd is not None:
        raise FileRefused(f"it lists {one_line(repr(odd), 40)}, which is not a shard name")
    return names


def _is_plain_shard_name(name: str) -> bool:
    return is_shard_name(name) and name.isprintable() and "/" not in name and "\\" not in name


def _read_optimizer(path: Path, variables: list[Any], batches: int) -> list[np.ndarray] | None:
    """The saved values of `variables`, in order; None when the file was saved at another
    batch count or for other variables; FileRefused when it is damaged or odd."""
    shapes = [tuple(int(d) for d in v.shape) for v in variables]
    dtypes = [_dtype(v) for v in variables]
    data = sum(
        math.prod(shape) * dtype.itemsize for shape, dtype in zip(shapes, dtypes, strict=True)
    )
    meta_bytes = 4 * (_NAME_CHARS * (len(variables) + 1))
    limit = data + meta_bytes + (1 << 20)  # + zip directory and .npy headers
    with open_npz(path, limit, max_arrays=len(variables) + 1) as archive:
        header = archive.headers.get("meta")
        if header is None or header.dtype.kind != "U" or header.shape != ():
            raise FileRefused("it has no meta text")
        if header.dtype.itemsize > meta_bytes:
            raise FileRefused("its meta is longer than the variables' names can be")
        try:
            meta = json.loads(str(archive.read("meta")[()]))
        except (ValueError, RecursionError) as error:
            raise FileRefused(f"its meta is not JSON ({one_line(error, 60)})") from None
        if not isinstance(meta, dict):
            raise FileRefused("its meta is not a JSON object")
        if meta.get("batches") != batches or meta.get("names") != [_name(v) for v in variables]:
            return None
        keys = [f"v{index}" for index in range(len(variables))]
        if set(archive.headers) != {"meta", *keys}:
            raise FileRefused("its arrays are not the optimizer's variables")
        for key, shape, dtype in zip(keys, shapes, dtypes, strict=True):
            saved = archive.headers[key]
            if saved.shape != shape or saved.dtype != dtype:
                raise FileRefused(f"its {key} is {saved.dtype} {saved.shape}, not {dtype} {shape}")
        return [archive.read(key) for key in keys]


def _dtype(variable: Any) -> np.dtype:
    """The numpy dtype of a Keras variable (whose `dtype` is a name such as "float32")."""
    try:
        return np.dtype(variable.dtype)
    except TypeError:  # a name numpy does not know: what the variable holds says it
        return np.asarray(variable.numpy()).dtype


def _name(variable: Any) -> str:
    """A variable's path without the optimizer's own name, which Keras numbers per process
    ("adam", "adam_1", ...): the same variable must match across trainers."""
    return variable.path.split("/", 1)[-1]
