"""Files inside the model store, opened without trusting them.

The store may be a folder shared with other machines, so everything in it is untrusted input:
nothing inside it is reached through a symbolic link (the store folder itself may be one), and
nothing but a regular file is opened, never in a way that could wait (`agent.files`' rules).
Here those refusals become one-line `ModelError`s that name the checkpoint and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from agent.errors import ModelError
from agent.files import FileIsLink, FileMissing, FileNotRegular, FileRefused, open_regular_file


@contextmanager
def open_store_file(
    path: Path, what: str, missing: str
) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open `path` for reading without following a link or blocking on a FIFO.

    Yields the binary stream and its `fstat`; refuses anything but a regular file with a
    `ModelError` that starts with `what`; `missing` says what a missing file means.
    """
    try:
        stream, info = open_regular_file(path)
    except FileRefused as error:
        raise refusal_error(error, path, what, missing) from None
    with stream:
        yield stream, info


def refusal_error(refusal: FileRefused, path: Path, what: str, missing: str) -> ModelError:
    """`agent.files`' refusal to open `path` as a one-line `ModelError` starting with `what`."""
    if isinstance(refusal, FileIsLink):
        return link_error(path, what)
    if isinstance(refusal, FileMissing):
        return ModelError(f"{what} has no {path.name}; {missing}")
    if isinstance(refusal, FileNotRegular):
        return ModelError(f"{what}: {path.name} is not a regular file; republish it")
    return ModelError(f"{what}: cannot read {path.name} ({refusal.reason})")


def link_error(path: Path, what: str) -> ModelError:
    return ModelError(
        f"{what}: {path.name} is a symbolic link, which the model store never follows; "
        "replace it with the real file or folder"
    )
