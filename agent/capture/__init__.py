"""Screen capture of the game window: finding it per platform, and the capture thread.

`find_window(WindowQuery(title, ...))` (or `fixed_region(left, top, width, height)`) gives a
GameWindow; `attach_window(handle)` one another process found;
`Grabber(window, fps, slot)` captures it on its own thread into a newest-value slot.
"""

from __future__ import annotations

import sys

from agent.capture.grabber import Grabber
from agent.capture.screen import open_mss, screen_bounds
from agent.capture.window import (
    FixedRegion,
    GameWindow,
    Owner,
    WindowError,
    WindowQuery,
    clip_to,
)
from agent.types import Region

__all__ = [
    "FixedRegion",
    "GameWindow",
    "Grabber",
    "Owner",
    "WindowError",
    "WindowQuery",
    "attach_window",
    "find_window",
    "fixed_region",
]


def find_window(query: WindowQuery) -> GameWindow:
    """The game window `query` names ("exact" title, or a "substring" of it with the game's
    program named too).

    With an owner, only windows of the process it names count (see `window.choose` for how one
    window is picked, or refused as ambiguous). Raises WindowError (one line, names the fix)
    when there is no display, no matching window, or the window is minimised or has zero size.
    """
    if sys.platform == "win32":
        from agent.capture import win32

        return win32.find_window(query)
    if sys.platform == "darwin":
        raise WindowError(
            "finding a window by title is not supported on macOS yet; set game.region in "
            "config.toml to the game's screen rectangle"
        )
    from agent.capture import x11

    return x11.find_window(query)


def attach_window(handle: int) -> GameWindow:
    """A handle to the OS window `handle` (`GameWindow.handle`) another process found, for its
    focus check; it never looks for another window."""
    if sys.platform == "win32":
        from agent.capture import win32

        return win32.attach(handle)
    if sys.platform == "darwin":
        raise WindowError("the keyboard backend needs X11 or Windows")
    from agent.capture import x11

    return x11.attach(handle)


def fixed_region(
    left: int, top: int, width: int, height: int, focus_window: GameWindow | None = None
) -> FixedRegion:
    """An explicit screen rectangle (config `game.region`) in physical pixels.

    `focus_window` is the game's window, for the keyboard backend's focus check. Raises
    WindowError when the rectangle has zero size or does not lie wholly on the screen.
    """
    region = Region(left, top, width, height)
    if width <= 0 or height <= 0:
        raise WindowError(
            f"game.region [{left}, {top}, {width}, {height}] has zero size; give a width and "
            "height in pixels, or [] to capture the game window"
        )
    with open_mss() as sct:
        screen = screen_bounds(sct)
    if clip_to(region, screen) != region:
        raise WindowError(
            f"game.region [{left}, {top}, {width}, {height}] is not wholly on the screen "
            f"({screen.width}x{screen.height} at {screen.left}, {screen.top}); fix game.region "
            "in config.toml"
        )
    return FixedRegion(region, focus_window)
