"""A virtual X display (Xvfb) for machines without a screen.

`charles drive` and the tests use the same code: when DISPLAY is unset on Linux, start Xvfb on a
free display number, point DISPLAY at it for this process and its children, and stop it on
the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator

from agent.errors import DependencyError
from agent.runtime.lifetime import tied_to_this_process
from agent.runtime.processes import stop_process

log = logging.getLogger(__name__)


def needs_virtual_display() -> bool:
    """True on Linux without DISPLAY (a server, CI, an SSH session)."""
    return sys.platform.startswith("linux") and not os.environ.get("DISPLAY")


@contextlib.contextmanager
def xvfb(width: int = 1920, height: int = 1080, timeout: float = 10.0) -> Iterator[str]:
    """Run Xvfb for the duration of the block; yields its DISPLAY string (":93")."""
    if shutil.which("Xvfb") is None:
        raise DependencyError(
            "there is no display and Xvfb is not installed: sudo apt-get install xvfb "
            "(or run scripts/setup), or set DISPLAY to a running X server"
        )
    read_end, write_end = os.pipe()
    # -displayfd: Xvfb picks a free display number itself and writes it once it accepts
    # connections (no race for a number, no polling). -noreset: otherwise the server resets
    # whenever its last client leaves, which drops state between two users of one display.
    # Tied to this process: after a `kill -9` of Charles the server must not linger.
    command = tied_to_this_process(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{width}x{height}x24",
         "-nolisten", "tcp", "-noreset"]
    )  # fmt: skip
    process = subprocess.Popen(
        command,
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        number = os.read(read_end, 32).decode().strip() if ready else ""
        if not number:
            raise DependencyError(f"Xvfb did not start within {timeout} s (exit {process.poll()})")
        display = f":{number}"
        log.info("started Xvfb on %s (%dx%d)", display, width, height)
        yield display
    finally:
        os.close(read_end)
        stop_process(process, timeout=5.0)


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
