"""A virtual X display (Xvfb) for machines without a screen.

`charles drive` and the tests use the same code: when DISPLAY is unset on Linux, start Xvfb on a
free display number, point DISPLAY at it for this process and its children, and stop it on
the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from agent.errors import DependencyError

log = logging.getLogger(__name__)

X_SOCKET_DIR = Path("/tmp/.X11-unix")


def needs_virtual_display() -> bool:
    """True on Linux without DISPLAY (a server, CI, an SSH session)."""
    return sys.platform.startswith("linux") and not os.environ.get("DISPLAY")


def _free_display_number(start: int) -> int:
    # A display number is taken while its lock file or socket exists.
    for number in range(start, start + 400):
        lock = Path(f"/tmp/.X{number}-lock")
        if not (X_SOCKET_DIR / f"X{number}").exists() and not lock.exists():
            return number
    raise DependencyError("no free X display number for Xvfb (/tmp/.X11-unix is full)")


def _accepts_connections(display: str) -> bool:
    from Xlib import display as xdisplay
    from Xlib.error import DisplayError

    try:
        xdisplay.Display(display).close()
    except (DisplayError, ConnectionError, OSError):
        return False
    return True


@contextlib.contextmanager
def xvfb(width: int = 1920, height: int = 1080, timeout: float = 10.0) -> Iterator[str]:
    """Run Xvfb for the duration of the block; yields its DISPLAY string (":93").

    Another process may take the same display number between the check and the start; Xvfb
    then exits at once and the next number is tried.
    """
    if shutil.which("Xvfb") is None:
        raise DependencyError(
            "there is no display and Xvfb is not installed: sudo apt-get install xvfb "
            "(or run scripts/setup), or set DISPLAY to a running X server"
        )
    first = 90
    for _attempt in range(5):
        number = _free_display_number(first)
        display = f":{number}"
        process = subprocess.Popen(
            ["Xvfb", display, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None and not _accepts_connections(display):
                if time.monotonic() > deadline:
                    raise DependencyError(f"Xvfb {display} did not answer within {timeout} s")
                time.sleep(0.05)
            if process.poll() is not None:
                first = number + 1
                continue
            log.info("started Xvfb on %s (%dx%d)", display, width, height)
            yield display
            return
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    raise DependencyError("Xvfb failed to start on five display numbers")


@contextlib.contextmanager
def display_for_this_process() -> Iterator[str | None]:
    """Use the existing display, or start Xvfb and set DISPLAY while the block runs."""
    if not needs_virtual_display():
        yield os.environ.get("DISPLAY")
        return
    with xvfb() as display:
        os.environ["DISPLAY"] = display
        try:
            yield display
        finally:
            os.environ.pop("DISPLAY", None)
