"""Files a user, a shared folder or another program may have planted something in.

Reading: never through a symbolic link (O_NOFOLLOW; only a file the user names, like a config
file, may be reached through one), never waiting on a FIFO or a device (opened without
blocking, then refused unless it is a regular file), never more than a stated size, so a
planted link to /dev/zero costs nothing; each refusal is a `FileRefused` the caller words.
Writing: a file is created new (O_CREAT | O_EXCL | O_NOFOLLOW: no link and no file that was
there is ever written into) and put in place by a rename, which replaces a link or an old file
at the name instead of writing through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
"""Open for reading: O_NOFOLLOW refuses a link as the last path component; O_NONBLOCK keeps a
FIFO from blocking the open (it is then refused as not a regular file). Both are absent on
Windows, where callers look for a link themselves."""
CREATE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
"""Create a new file: O_EXCL fails on any name present (a planted link included) and O_NOFOLLOW
refuses a link even where O_EXCL alone would not."""
_CHUNK_BYTES = 1 << 20
_TEMPORARY_ATTEMPTS = 100
MOST_NAMES = 1000
"""How many numbered names (`out-2.mp4` ...) are tried before giving up."""


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace `path` with what `write` writes to a binary stream, atomically.

    The data goes to a new hidden temporary file beside `path` (".<name>.<random>.tmp", a
    name no reader looks for), is flushed to disk, then renamed over `path`: a reader sees the
    old file or the whole new one, never a part. Nothing is written through a link or into a
    file that was there before: the temporary file is created afresh (a name already taken,
    even by a link, is passed over and left alone), and the rename replaces a link or file at
    `path` instead of writing into it. The folder is created (with its parents) when missing.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temporary, fd = _create_temporary(folder, path.name)
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()  # ours: created by this call with O_EXCL
        raise
    fsync_path(folder)


def _create_temporary(folder: Path, name: str) -> tuple[Path, int]:
    for _ in range(_TEMPORARY_ATTEMPTS):
        temporary = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return temporary, os.open(temporary, CREATE_FLAGS, 0o666)
        except FileExistsError:
            continue  # someone else's name (or a link planted there): never touched
        except OSError as error:
            if error.errno == errno.ELOOP:
                continue
            raise
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder / name))


def numbered(path: Path, number: int) -> Path:
    """`path` for 1, else `<stem>-<number><suffix>` beside it: `out.mp4`, `out-2.mp4`, ..."""
    if number == 1:
        return path
    return path.with_name(f"{path.stem}-{number}{path.suffix}")


def free_names(path: Path, first: int = 1) -> Iterator[Path]:
    """The names `create_first_free` tries for `path`, from number `first` on."""
    return (numbered(path, number) for number in range(first, first + MOST_NAMES))


def create_first_free(names: Iterable[Path], mode: int = 0o666) -> tuple[Path, int]:
    """A new file at the first of `names` that nothing has (a file, a folder or a link, even a
    dangling one, has the name: CREATE_FLAGS, in one step, so no race can slip a link in), and
    its descriptor; folders are made. FileExistsError when every name is taken."""
    last = None
    for path in names:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return path, os.open(path, CREATE_FLAGS, mode)
        except FileExistsError:
            last = path
    raise FileExistsError(f"every name up to {last} is taken")


def write_new_file(names: Iterable[Path], data: bytes, mode: int = 0o666) -> Path:
    """`data` in a new file at the first free of `names` (`create_first_free`); where it went.
    A write that fails (a full disk) removes the file: no half file is left behind."""
    path, fd = create_first_free(names, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()  # ours: created just above
        raise
    return path


class FileRefused(Exception):
    """Why a file is not read: the problem only; the caller names the file.

    Each refusal of `open_regular` and `read_regular_file` is one of the subclasses below, for
    a caller that words each its own way (the model store, the config file); the others show
    the problem as it is.
    """


class FileMissing(FileRefused):
    """Nothing at the path (or, where links are followed, a link to nothing)."""

    def __init__(self, error: OSError) -> None:
        super().__init__("it does not exist (deleted meanwhile?)")
        self.error = error


class FileIsLink(FileRefused):
    """A symbolic link, which is never followed."""

    def __init__(self) -> None:
        super().__init__("it is a symbolic link, which Charles never follows")


class FileNotRegular(FileRefused):
    """A folder, FIFO, device or socket: never opened in a way that could wait."""

    def __init__(self) -> None:
        super().__init__("it is not a regular file")


class FileTooLarge(FileRefused):
    """More bytes than the reader takes."""

    def __init__(self, size: int | None, limit: int) -> None:
        if size is None:
            super().__init__(f"it grew past the {limit} bytes it may have while being read")
        else:
            super().__init__(f"it is {size} bytes, more than the {limit} it may have")
        self.size = size
        """Bytes the file has; None when it grew past `limit` while being read."""
        self.limit = limit


class FileUnopenable(FileRefused):
    """The system refused to open it (permissions, a NUL in the path, ...)."""

    def __init__(self, error: OSError | ValueError) -> None:
        # strerror leaves out the path, which the caller names (and may be long).
        self.reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
        super().__init__(f"it cannot be opened ({self.reason})")
        self.error = error


def read_regular_file(path: Path, limit: int, *, follow_links: bool = False) -> bytes:
    """The whole content of the regular file `path`, of at most `limit` bytes.

    Refused (`FileRefused`, see `open_regular`) for a symbolic link, a FIFO, device or folder,
    a missing file and a file over `limit` bytes (`FileTooLarge`, also for one that grows past
    it while being read), so a planted link to /dev/zero costs nothing. An error while reading
    is an `OSError`.
    """
    stream, info = open_regular_file(path, follow_links=follow_links)
    with stream:
        if info.st_size > limit:
            raise FileTooLarge(info.st_size, limit)
        chunks, total = [], 0
        while total <= limit:
            chunk = stream.read(min(_CHUNK_BYTES, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total > limit:
        raise FileTooLarge(None, limit)
    return b"".join(chunks)


def open_regular_file(path: Path, *, follow_links: bool = False) -> tuple[BinaryIO, os.stat_result]:
    """`path` opened for binary reading (`open_regular` with READ_FLAGS), and its `fstat`."""
    fd, info = open_regular(path, follow_links=follow_links)
    return os.fdopen(fd, "rb"), info


def open_regular(
    path: Path, flags: int = READ_FLAGS, mode: int = 0o666, *, follow_links: bool = False
) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file `path` opened with `flags`, and its `fstat`.

    `flags` are READ_FLAGS or include them (O_NOFOLLOW, O_NONBLOCK), so the open itself
    neither follows a link nor waits on a FIFO; `mode` is for flags that create the file.
    Refused with `FileIsLink` for a symbolic link (`follow_links` follows it instead, for a
    file the user names, like a config file), `FileNotRegular` for anything but a regular
    file, `FileMissing` when nothing is there and `FileUnopenable` when the system says no.
    """
    if follow_links:
        flags &= ~getattr(os, "O_NOFOLLOW", 0)
    elif not hasattr(os, "O_NOFOLLOW") and path.is_symlink():
        raise FileIsLink()
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError as error:
        raise FileMissing(error) from None
    except OSError as error:
        if not follow_links and (error.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink()):
            raise FileIsLink() from None
        if error.errno == errno.EISDIR:  # a folder opened for writing: no file to fstat
            raise FileNotRegular() from None
        raise FileUnopenable(error) from None
    except ValueError as error:  # a NUL in the path
        raise FileUnopenable(error) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileNotRegular()
    return fd, info


def fsync_path(path: Path) -> None:
    """Flush `path` (a file, or a folder's entries) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # folders cannot be fsynced on Windows
    finally:
        os.close(fd)
