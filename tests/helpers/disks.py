"""A real, small file system for full-disk tests: a tmpfs of a few megabytes.

Writes past its size fail with ENOSPC exactly as on a full disk, so the code under test meets
the real error from the real kernel, not a mock. Mounting needs root (CI and this project's
machines run the suite as root); elsewhere the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def can_mount() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and bool(shutil.which("mount"))


@contextlib.contextmanager
def small_filesystem(size_bytes: int) -> Iterator[Path]:
    """A fresh tmpfs of `size_bytes` (rounded up to pages), unmounted afterwards.

    Skips the calling test when this machine cannot mount one (not root, not Linux).
    """
    if not can_mount():
        pytest.skip("full-disk tests mount a tmpfs, which needs root on Linux")
    mountpoint = Path(tempfile.mkdtemp(prefix="charles-small-disk-"))
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        # Lazy: a process the test started may still hold a file open there.
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system holding folder `path` until at most `leave_bytes` are free.

    Returns the filler file, so a test can delete it to free the space again.
    """
    filler = path / ".filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "ab") as stream:
        while (room := free_bytes(path) - leave_bytes) > 0:
            try:
                stream.write(chunk[: min(len(chunk), room)])
                stream.flush()
            except OSError:
                break
    return filler
