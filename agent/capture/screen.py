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


def display_gone() -> bool:
    """True when this process's X display can no longer be reached (the X server stopped).

    Asked after an unexpected error in a thread that talks to the display: libraries report a
    lost server in many ways (mss: AssertionError or ScreenShotError, python-xlib:
    ConnectionClosedError), and a fresh connection attempt tells them apart from real bugs.
    """
    if not sys.platform.startswith("linux"):
        return False
    from Xlib import display as xdisplay

    try:
        xdisplay.Display().close()
    except Exception:  # refused, reset while connecting, closed by a dying server: all "gone"
        return True
    return False


def explain_display_loss(error: BaseException) -> BaseException:
    """`error` as a one-line WindowError when the display is gone; else `error` itself."""
    if isinstance(error, WindowError) or not display_gone():
        return error
    display = os.environ.get("DISPLAY", "")
    return WindowError(
        f"lost the X display {display!r} (the X server stopped?); start it again, or run "
        "Charles inside the desktop session that shows the game"
    )
