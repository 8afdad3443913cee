"""Noticing the shards that appear in a data folder, for the trainer."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from agent.errors import one_line
from agent.learn.shard_format import (
    Shard,
    ShardError,
    check_input_shape,
    is_shard_name,
    read_shard,
)

log = logging.getLogger(__name__)


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
    ) -> None:
        self.folder = Path(folder)
        self.input_shape = check_input_shape(input_shape)
        self.loaded_names: set[str] = set(already_loaded)
        self.skipped = 0
        self._skipped_names: set[str] = set()

    def poll(self, limit: int | None = None) -> list[Shard]:
        """The new shards, in name order; at most `limit` (the rest wait for the next poll).

        Raises `ShardError` when the folder does not exist or cannot be listed.
        """
        shards: list[Shard] = []
        for name in self._new_names():
            if limit is not None and len(shards) >= limit:
                break
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

    def _new_names(self) -> list[str]:
        folder = self.folder
        try:
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            raise ShardError(
                f"data folder {folder} does not exist; start charles collect to fill it, or "
                "set data.folder to the folder the collectors write"
            ) from None
        except NotADirectoryError:
            raise ShardError(
                f"data folder {folder} is not a folder; set data.folder to the collectors' folder"
            ) from None
        except OSError as error:
            raise ShardError(
                f"data folder {folder} cannot be listed ({error.strerror}); give this user "
                "access to it or set data.folder to another folder"
            ) from None
        known = self.loaded_names | self._skipped_names
        return sorted(name for name in names if is_shard_name(name) and name not in known)
