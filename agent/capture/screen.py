"""The screen as mss sees it: opening an mss instance and the bounds of the whole desktop."""

from __future__ import annotations

import os
import sys
from typing import Any

import mss

from agent.capture.window import WindowError
from agent.types import Region


def open_mss() -> Any:
    """A new mss instance for the calling thread (mss objects must not cross threads).

    Raises WindowError when there is no display to capture.
    """
    if sys.platform == "win32":
        from agent.capture.win32 import make_dpi_aware

        make_dpi_aware()  # before mss reads monitor sizes, so they are physical pixels
    elif sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise WindowError(no_display_message())
    factory = getattr(mss, "MSS", None) or mss.mss  # mss.MSS from 10.2; mss.mss before
    try:
        return factory()
    except mss.ScreenShotError as error:
        raise WindowError(no_display_message(error)) from None


def screen_bounds(sct: Any) -> Region:
    """The rectangle covering every monitor (mss's monitor 0), in physical pixels."""
    whole = sct.monitors[0]
    return Region(whole["left"], whole["top"], whole["width"], whole["height"])


def no_display_message(error: object = None) -> str:
    display = os.environ.get("DISPLAY")
    if not display:
        problem = "there is no X display (DISPLAY is not set)"
    else:
        problem = f"cannot connect to X display {display!r}"
        if error is not None:
            problem += f" ({' '.join(str(error).split())})"
    return (
        f"{problem}; run Charles inside the desktop session that shows the game, or set "
        "DISPLAY to its X server (`charles drive` starts Xvfb itself when DISPLAY is unset)"
    )
