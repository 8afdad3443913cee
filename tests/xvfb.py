"""Looking at and acting on a test X server from outside: windows by title, focus, keys.

The server itself is the `x_display` fixture (tests/conftest.py, on agent.display.xvfb). Under
bare Xvfb there is no window manager: windows are never decorated, moved or focused by anyone
but the test itself. Focus and key presses go through python-xlib (core protocol and the XTest
extension), a dependency of Charles on Linux, so the tests need no extra program such as
xdotool.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any


def display_env(display: str) -> dict[str, str]:
    """The environment for a child process that should use `display` and nothing else."""
    env = {**os.environ, "DISPLAY": display}
    env.pop("WAYLAND_DISPLAY", None)
    return env


@dataclass(frozen=True)
class Window:
    """A top-level X window: id, position of its top-left pixel on the root, size in pixels."""

    id: int
    x: int
    y: int
    width: int
    height: int


def find_windows(display: str, title: str) -> list[Window]:
    """Windows on `display` whose title (_NET_WM_NAME, else WM_NAME) is exactly `title`.

    Walks the whole tree from the root. python-xlib rather than `xdotool search --name`:
    xdotool 3.20160805 (Debian 12) cannot match the UTF8_STRING WM_NAME that SDL2 sets.
    """
    from Xlib import X
    from Xlib import display as xdisplay
    from Xlib.error import XError

    connection = xdisplay.Display(display)
    try:
        utf8 = connection.intern_atom("UTF8_STRING")
        net_wm_name = connection.intern_atom("_NET_WM_NAME")
        root = connection.screen().root
        found = []
        pending = [root]
        while pending:
            window = pending.pop()
            try:
                pending.extend(window.query_tree().children)
                if _title(window, net_wm_name, utf8) != title:
                    continue
                if window.get_attributes().map_state != X.IsViewable:
                    continue
                geometry = window.get_geometry()
                origin = window.translate_coords(root, 0, 0)
            except XError:
                # The window went away while we looked at it.
                continue
            found.append(Window(window.id, -origin.x, -origin.y, geometry.width, geometry.height))
        return found
    finally:
        connection.close()


def _title(window: Any, net_wm_name: int, utf8: int) -> str | None:
    prop = window.get_full_property(net_wm_name, utf8)
    if prop is not None:
        return prop.value.decode("utf-8", "replace")
    name = window.get_wm_name()
    return name.decode("latin-1") if isinstance(name, bytes) else name


def wait_for_window(display: str, title: str, timeout: float = 15.0) -> Window:
    """The one viewable window titled `title`, waiting up to `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        windows = find_windows(display, title)
        if len(windows) == 1:
            return windows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"expected one window titled {title!r}, found {windows}")
        time.sleep(0.1)


def focus_window(display: str, window_id: int) -> None:
    """Give `window_id` the keyboard focus, as a player clicking it would; returns once done."""
    from Xlib import X
    from Xlib import display as xdisplay

    connection = xdisplay.Display(display)
    try:
        window = connection.create_resource_object("window", window_id)
        window.set_input_focus(X.RevertToParent, X.CurrentTime)
        connection.sync()  # the server has applied the request when sync returns
    finally:
        connection.close()


def key_down(display: str, key: str) -> None:
    """Press `key` (an X keysym name: "Up", "s", "F10", "Escape") and leave it down."""
    _fake_key(display, key, down=True)


def key_up(display: str, key: str) -> None:
    _fake_key(display, key, down=False)


def tap_key(display: str, key: str) -> None:
    """Press and release `key`, like a quick key stroke."""
    key_down(display, key)
    time.sleep(0.05)
    key_up(display, key)


def _fake_key(display: str, key: str, down: bool) -> None:
    from Xlib import XK, X
    from Xlib import display as xdisplay
    from Xlib.ext import xtest

    connection = xdisplay.Display(display)
    try:
        keysym = XK.string_to_keysym(key)
        keycode = connection.keysym_to_keycode(keysym)
        if not keysym or not keycode:
            raise ValueError(f"no key called {key!r} on {display}")
        xtest.fake_input(connection, X.KeyPress if down else X.KeyRelease, keycode)
        connection.sync()
    finally:
        connection.close()
