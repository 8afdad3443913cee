"""The disk budget of a drive that records for days: delete the oldest recordings Charles
wrote, and never anything else.

A recordings folder may hold the user's own files, and files named like Charles's that Charles
did not write (copied in, renamed, edited). So Charles keeps a ledger in the folder,
`.charles-recordings.json`: the name, size and modification time of every file it finished.
Only a file still exactly as the ledger remembers it (a regular file, not a link, same size and
time) is ever deleted; an entry whose file is gone or changed is forgotten, never acted on.
The ledger is an untrusted file like any other: read with a size limit, without following a
link, and replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.files import FileMissing, FileRefused, read_regular_file, write_atomically

log = logging.getLogger(__name__)

LEDGER_NAME = ".charles-recordings.json"
LEDGER_LIMIT = 4 << 20
"""Bytes of ledger read at most: ~40,000 recordings."""
GIGABYTE = 1_000_000_000


@dataclass(frozen=True)
class Written:
    """A recording Charles finished, as it was then."""

    name: str
    size: int
    mtime_ns: int


class RecordingBudget:
    """Keeps the recordings Charles wrote in one folder within `keep_bytes` (0: no limit)."""

    def __init__(self, folder: Path, keep_bytes: int) -> None:
        self.folder = folder
        self.keep_bytes = keep_bytes
        self.deleted: list[str] = []
        """Names deleted to stay within the budget, oldest first."""
        self._lock = threading.Lock()  # two recordings of one drive may finish at once

    @property
    def ledger(self) -> Path:
        return self.folder / LEDGER_NAME

    def finished(self, path: Path, writing: Path | None = None) -> None:
        """`path` (in the folder) is a finished recording: remember it, then delete the oldest
        remembered ones while the folder's recordings (and `writing`, the file being written)
        are over the budget. Never raises: a budget that cannot be kept is logged."""
        try:
            with self._lock:
                entries = self._read()
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    entries = [e for e in entries if e.name != path.name]
                    entries.append(Written(path.name, info.st_size, info.st_mtime_ns))
                entries = self._prune(entries, writing)
                self._write(entries)
        except OSError as error:
            log.warning("recordings in %s: could not keep the disk budget (%s)", self.folder, error)

    def used_bytes(self, writing: Path | None = None) -> int:
        """Bytes the remembered recordings (and `writing`) take now."""
        with self._lock:
            entries = [e for e in self._read() if self._unchanged(e)]
        return sum(e.size for e in entries) + _size(writing)

    def _prune(self, entries: list[Written], writing: Path | None) -> list[Written]:
        kept = [e for e in entries if self._unchanged(e)]  # forget what changed or went
        if self.keep_bytes <= 0:
            return kept
        kept.sort(key=lambda e: e.mtime_ns)
        total = sum(e.size for e in kept) + _size(writing)
        while kept and total > self.keep_bytes:
            oldest = kept.pop(0)
            if writing is not None and oldest.name == writing.name:
                continue
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile: as good
                os.unlink(self.folder / oldest.name)
            total -= oldest.size
            self.deleted.append(oldest.name)
            log.info(
                "deleted the oldest recording %s to keep recordings within %.2f GB",
                oldest.name, self.keep_bytes / GIGABYTE,
            )  # fmt: skip
        return kept

    def _unchanged(self, entry: Written) -> bool:
        """The entry's file is still the regular file Charles finished (never a link)."""
        if "/" in entry.name or entry.name in ("", ".", ".."):
            return False  # a ledger edited to point elsewhere
        try:
            info = os.lstat(self.folder / entry.name)
        except OSError:
            return False
        return (
            stat.S_ISREG(info.st_mode)
            and info.st_size == entry.size
            and info.st_mtime_ns == entry.mtime_ns
        )

    def _read(self) -> list[Written]:
        try:
            data = json.loads(read_regular_file(self.ledger, LEDGER_LIMIT))
            return [
                Written(str(item["name"]), int(item["size"]), int(item["mtime_ns"]))
                for item in data["recordings"]
            ]
        except FileMissing:
            return []
        except (FileRefused, ValueError, KeyError, TypeError) as error:
            log.warning(
                "ignoring %s (%s): only recordings finished from now on count", self.ledger, error
            )
            return []

    def _write(self, entries: list[Written]) -> None:
        text = json.dumps({"recordings": [e.__dict__ for e in entries]}, indent=1)
        write_atomically(self.ledger, lambda stream: stream.write(text.encode("utf-8")))


def _size(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
