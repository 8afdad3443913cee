"""Noticing the shards that appear in a data folder, for the trainer: oldest first across
every collector, and without listing a large folder on every poll.

Order: a shard's name holds its writer's host, process id, Unix time in milliseconds and
sequence number (agent/learn/shard_writer.py), so shards are taken by time, then host, process
and sequence: under a backlog, shards from several collectors interleave as they were written
instead of one host's all going first (name order starts with the host). A name that does not
parse (another tool's, an older format) sorts before every parsed one, by name.

Listing: the trainer polls for one shard at a time while its buffers fill, so with a backlog
of thousands of shards a full listing per poll would cost more than the reads. The watcher
keeps the shards it has listed and not yet read in a queue and lists the folder again only
when it may have changed: its modification time moved, or the last listing was made so soon
after the last change that a later one could share its timestamp (coarse timestamps: FAT 2 s,
some network filesystems 1 s), or RELIST_SECONDS passed (network filesystems may cache a
folder's attributes); and while listed shards still wait, at most once a second.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.errors import one_line
from agent.learn.shard_format import (
    SHARD_PREFIX,
    SHARD_SUFFIX,
    Shard,
    ShardError,
    check_input_shape,
    is_shard_name,
    read_shard,
)
from agent.runtime.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

RELIST_SECONDS = 10.0
"""List the folder at least this often, even when its modification time says nothing changed."""
BACKLOG_RELIST_SECONDS = 1.0
"""While listed shards wait to be read, list again at most this often (collectors writing
change the folder many times a second)."""
SAME_TIMESTAMP_SECONDS = 2.0
"""A folder listed less than this after its last change may change again without its
modification time moving."""

IntakeKey = tuple[int, str, int, int]


def intake_key(name: str) -> IntakeKey:
    """Where shard `name` goes in the intake order: (Unix ms, host, pid, sequence) parsed from
    `shard-{host}-{pid}-{unix ms}-{seq}.npz`; (-1, name, 0, 0) for a name that does not parse."""
    body = name[len(SHARD_PREFIX) : -len(SHARD_SUFFIX)]
    parts = body.rsplit("-", 3)
    if len(parts) == 4 and parts[0] and all(part.isdigit() for part in parts[1:]):
        host, pid, millis, sequence = parts
        return int(millis), host, int(pid), int(sequence)
    return -1, name, 0, 0


class ShardWatcher:
    """Finds and reads the shards that appeared in a data folder since the last poll.

    Only names are remembered (`loaded_names`, which a restarted trainer can pass back as
    `already_loaded`), never the shards themselves. A shard that cannot be used is logged
    once, in one line, and skipped for good: it is never read again.
    """

    def __init__(
        self,
        folder: Path,
        input_shape: tuple[int, int, int],
        already_loaded: Iterable[str] = (),
        clock: Clock = SYSTEM_CLOCK,
        takes: Callable[[str], bool] | None = None,
    ) -> None:
        """`takes`: which shard names are this watcher's (a training cluster member's part;
        None: all)."""
        self.folder = Path(folder)
        self.input_shape = check_input_shape(input_shape)
        self.loaded_names: set[str] = set(already_loaded)
        self.skipped = 0
        self.listings = 0
        """Times the folder was listed."""
        self._skipped_names: set[str] = set()
        self._clock = clock
        self._takes = takes
        self._queue: list[tuple[IntakeKey, str]] = []  # listed, not yet read: a heap
        self._queued: set[str] = set()
        self._listed_mtime_ns: int | None = None
        self._listed_at = -RELIST_SECONDS
        self._listed_soon_after_change = True

    def poll(self, limit: int | None = None) -> list[Shard]:
        """The new shards, oldest first across writers (see the module docstring); at most
        `limit` (the rest wait for the next poll).

        Raises `ShardError` when the folder does not exist or cannot be listed.
        """
        self._list_if_changed()
        shards: list[Shard] = []
        while self._queue and (limit is None or len(shards) < limit):
            _, name = heapq.heappop(self._queue)
            self._queued.discard(name)
            path = self.folder / name
            try:
                shard = read_shard(path, self.input_shape)
            except ShardError as error:
                if not os.path.lexists(path):
                    continue  # deleted since listed: nothing to skip or warn about
                self._skipped_names.add(name)
                self.skipped += 1
                log.warning("skipping a shard: %s", one_line(error, 1000))
                continue
            self.loaded_names.add(name)
            shards.append(shard)
        return shards

    def _list_if_changed(self) -> None:
        folder = self.folder
        try:
            mtime_ns = os.stat(folder).st_mtime_ns
        except OSError as error:
            raise self._unlistable(error) from None
        now = self._clock.now()
        if self._queue and now - self._listed_at < BACKLOG_RELIST_SECONDS:
            return  # shards are waiting anyway: a newer one can wait its turn a moment
        if (
            mtime_ns == self._listed_mtime_ns
            and not self._listed_soon_after_change
            and now - self._listed_at < RELIST_SECONDS
        ):
            return
        try:
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries]
        except OSError as error:
            raise self._unlistable(error) from None
        self.listings += 1
        self._listed_at = now
        self._listed_mtime_ns = mtime_ns
        self._listed_soon_after_change = time.time() - mtime_ns / 1e9 < SAME_TIMESTAMP_SECONDS
        known = self.loaded_names | self._skipped_names | self._queued
        takes = self._takes
        for name in names:
            if is_shard_name(name) and name not in known and (takes is None or takes(name)):
                heapq.heappush(self._queue, (intake_key(name), name))
                self._queued.add(name)

    def _unlistable(self, error: OSError) -> ShardError:
        folder = self.folder
        if isinstance(error, FileNotFoundError):
            return ShardError(
                f"data folder {folder} does not exist; start charles collect to fill it, or "
                "set data.folder to the folder the collectors write"
            )
        if isinstance(error, NotADirectoryError):
            return ShardError(
                f"data folder {folder} is not a folder; set data.folder to the collectors' folder"
            )
        return ShardError(
            f"data folder {folder} cannot be listed ({error.strerror}); give this user "
            "access to it or set data.folder to another folder"
        )
