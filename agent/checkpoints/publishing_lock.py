"""One publisher per model line and store: an OS file lock the trainer holds while it publishes."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

from agent.checkpoints.publish import LEFTOVER_PREFIXES, line_folder, not_writable
from agent.checkpoints.store_files import link_error
from agent.errors import ModelError, one_line
from agent.files import (
    READ_FLAGS,
    FileIsLink,
    FileMissing,
    FileNotRegular,
    FileUnopenable,
    open_regular,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".trainer.lock"
"""In a line's folder: held (an OS file lock) by the one trainer publishing that line."""
_HOLDER_LIMIT = 4096
"""Bytes of a lock file read to say who holds it."""
_LOCK_FLAGS = READ_FLAGS | os.O_RDWR | os.O_CREAT
"""Open the lock file for reading and writing, created when missing; never through a link."""


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
            raise link_error(self.path, what) from None
        except FileNotRegular:
            raise ModelError(f"{what}: {self.path.name} is not a regular file; delete it") from None
        except (FileMissing, FileUnopenable) as error:
            raise not_writable(self.store, error.error) from None
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
