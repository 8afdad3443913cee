"""The reference checkpoint shipped with Charles, and which checkpoint a session drives with.

`agent/checkpoints/reference_checkpoints/<line>/` holds a checkpoint trained by this project's own
`charles collect` + `charles train` (its manifest's note gives the recipe), so that
`charles drive` with the default config drives the bundled game well before anyone has trained
anything. It is used only when `model.checkpoint = "latest"` and the store holds no checkpoint
of the line: anything a trainer published is newer and wins.
"""

from __future__ import annotations

from pathlib import Path

from agent.checkpoints.manifest import Checkpoint, read_manifest
from agent.checkpoints.resolve import resolve
from agent.config import Config
from agent.nets.runtime import configure_threads

REFERENCE_ROOT = Path(__file__).resolve().parent / "reference_checkpoints"


def reference_checkpoint(line: str) -> Checkpoint | None:
    """The shipped checkpoint of `line`, or None when Charles ships none for it."""
    folder = REFERENCE_ROOT / line
    if not (folder / "manifest.json").is_file():
        return None
    return Checkpoint(folder, read_manifest(folder))


def checkpoint_to_drive(config: Config) -> Checkpoint | None:
    """`model.checkpoint` resolved, falling back to the reference for "latest" on an empty
    store; None means fresh weights.

    "latest" is the newest version that would load (a damaged newer one is skipped with a
    warning); learning whether a version's arrays fit the network builds one, which is
    TensorFlow's first work in this process, so its thread pools are set before, as
    `[inference]` says. A store path that is not a folder is a one-line error.
    """
    if config.model.checkpoint == "latest":
        configure_threads(config.inference)
    found = resolve(Path(config.model.store), config.model.line, config.model.checkpoint)
    if found is None and config.model.checkpoint == "latest":
        return reference_checkpoint(config.model.line)
    return found
