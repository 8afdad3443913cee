"""The trainer's own files, beside the model store: what a restart needs besides a checkpoint.

    <state>/<line>/optimizer.npz        Adam's variables at the last publish, with its batch count
    <state>/<line>/loaded-shards.txt    names of the shards already in the buffers
    <state>/<line>/buffers-0.npz, -1    the rotating copy of the buffers (agent.learn.buffers)
    <state>/<line>/tensorboard/         TensorBoard event files

Every file is replaced atomically (a hidden temporary file renamed over it), so `kill -9` at
any moment leaves either the old or the new version, never half of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from agent.learn.buffers import BufferSet
from agent.learn.shards import write_atomically

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.npz"
SHARDS_FILE = "loaded-shards.txt"


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
        """Restore Adam's variables saved at `batches`; False (nothing changed) otherwise."""
        path = self.folder / OPTIMIZER_FILE
        if not path.is_file() or path.is_symlink():
            return False
        try:
            with np.load(path, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                values = [saved[f"v{index}"] for index in range(len(optimizer.variables))]
        except Exception as error:  # any damage (truncated, empty, odd meta): start afresh
            log.warning("optimizer state %s is unreadable (%s); Adam starts afresh", path, error)
            return False
        names = [_name(v) for v in optimizer.variables]
        if not isinstance(meta, dict):
            return False
        if meta.get("batches") != batches or meta.get("names") != names:
            return False
        if any(
            v.shape != tuple(value.shape)
            for v, value in zip(optimizer.variables, values, strict=True)
        ):
            return False
        for variable, value in zip(optimizer.variables, values, strict=True):
            variable.assign(value)
        log.info("optimizer state restored (batch %d)", batches)
        return True

    # --- shards and buffers ------------------------------------------------------------------

    def loaded_shards(self) -> set[str]:
        path = self.folder / SHARDS_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return set()
        self._shards = {name for name in text.splitlines() if name}
        return set(self._shards)

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


def _name(variable: Any) -> str:
    """A variable's path without the optimizer's own name, which Keras numbers per process
    ("adam", "adam_1", ...): the same variable must match across trainers."""
    return variable.path.split("/", 1)[-1]
