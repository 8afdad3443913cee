"""Noticing newer checkpoints of one model line in the model store, cheaply.

A poll costs one `stat` of the line's folder while nothing changes. Only when its entries change
(a version renamed into place, a folder copied in) is the folder listed, and then only the
manifests of versions newer than the driving one are read. Weights are never read here: the
loader hashes them, off the driving path.

A version that was refused is remembered with the identity of its files (size and change time of
its manifest and weights), so the same bad version is not tried again and again. One whose files
change afterwards (a copy that was still being written) is looked at again once they have stood
still for SETTLE_SECONDS, so a slow copy costs one refusal, not one per chunk.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from agent.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE, Checkpoint, version_number
from agent.checkpoints.resolve import checkpoint_in
from agent.errors import ModelError
from agent.runtime.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

RESCAN_SECONDS = 10.0
"""List the folder at least this often anyway: a shared network folder may not update its
modification time when another machine adds to it."""

SETTLE_SECONDS = 2.0
"""A refused version whose files changed is looked at again after they stood still this long."""

FileIdentity = tuple[tuple[int, int] | None, tuple[int, int] | None]
"""(size, mtime_ns) of a version's manifest and weights; None for a file that is not there."""


@dataclass(frozen=True)
class Candidate:
    """A newer version worth loading, and the identity of its files when it was found."""

    checkpoint: Checkpoint
    number: int
    identity: FileIdentity


@dataclass(frozen=True)
class Rejection:
    """A version refused, with the one-line reason a person reads."""

    version: str
    reason: str
    at: float
    """Clock time of the refusal."""


class CheckpointWatcher:
    """Finds the newest version of `line` in `store` newer than the one driving."""

    def __init__(
        self, store: Path, line: str, driving_number: int, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.root = store / line
        self._clock = clock
        self.line = line
        self.driving_number = driving_number
        self._refused: dict[int, FileIdentity] = {}
        self._changing: dict[int, tuple[FileIdentity, float]] = {}
        self._folder_stamp: tuple[int, int] | None = None
        self._numbers: list[int] = []
        self._listed_at = -RESCAN_SECONDS

    def next_candidate(self) -> tuple[Candidate | None, list[Rejection]]:
        """The newest version newer than the driving one that is not known to be bad, and the
        versions refused on the way (their manifests did not pass)."""
        refused: list[Rejection] = []
        for number in reversed(self._newer_numbers()):
            folder = self.root / f"v{number:04d}"
            identity = _identity(folder)
            if number in self._refused and not self._settled(number, identity):
                continue
            try:
                checkpoint = checkpoint_in(folder, self.line)
            except ModelError as error:
                refused.append(self.refuse(number, identity, str(error)))
                continue
            return Candidate(checkpoint, number, identity), refused
        return None, refused

    def _settled(self, number: int, identity: FileIdentity) -> bool:
        """True when a refused version's files changed and have stood still since."""
        if self._refused[number] == identity:
            return False
        now = self._clock.now()
        seen, since = self._changing.get(number, (None, now))
        if seen != identity:
            self._changing[number] = (identity, now)  # still being written: wait
            return False
        return now - since >= SETTLE_SECONDS

    def refuse(self, number: int, identity: FileIdentity, reason: str) -> Rejection:
        """Remember `number` as bad until its files change."""
        self._refused[number] = identity
        self._changing.pop(number, None)
        return Rejection(f"v{number:04d}", reason, self._clock.now())

    def accept(self, number: int) -> None:
        """`number` now drives: only newer versions are candidates from here on."""
        self.driving_number = max(self.driving_number, number)
        self._refused = {n: i for n, i in self._refused.items() if n > self.driving_number}
        self._changing = {n: i for n, i in self._changing.items() if n > self.driving_number}

    def _newer_numbers(self) -> list[int]:
        try:
            info = os.lstat(self.root)
        except OSError:
            self._numbers = []
            return []
        stamp = (info.st_mtime_ns, info.st_ino)
        now = self._clock.now()
        if stamp != self._folder_stamp or now - self._listed_at >= RESCAN_SECONDS:
            self._folder_stamp, self._listed_at = stamp, now
            self._numbers = self._list()
        return [n for n in self._numbers if n > self.driving_number]

    def _list(self) -> list[int]:
        if self.root.is_symlink():
            return []  # the store refuses links inside it; `charles model list` says why
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return sorted(n for name in names if (n := version_number(name)) is not None)


def _identity(folder: Path) -> FileIdentity:
    def of(path: Path) -> tuple[int, int] | None:
        try:
            info = os.lstat(path)
        except OSError:
            return None
        return (info.st_size, info.st_mtime_ns)

    return (of(folder / MANIFEST_FILE), of(folder / WEIGHTS_FILE))
