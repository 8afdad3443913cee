"""Looking at and acting on a test X server from outside: windows by title, focus, keys.

The server itself is the `x_display` fixture (tests/conftest.py, on
agent.runtime.display.xvfb). Under
bare Xvfb there is no window manager: windows are never decorated, moved or focused by anyone
but the test itself. Focus and key presses go through python-xlib (core protocol and the XTest
extension), a dependency of Charles on Linux, so the tests need no extra program such as
xdotool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
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


def keycode(display: str, name: str) -> int:
    """The keycode of the key with X keysym name `name` ("w", "Up") on `display`."""
    from Xlib import XK
    from Xlib import display as xdisplay

    connection = xdisplay.Display(display)
    try:
        return connection.keysym_to_keycode(XK.string_to_keysym(name))
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


_WINDOW_PROGRAM = """
import select, sys
from Xlib import X, Xatom, display
title, x, y, width, height, claimed_pid = sys.argv[1], *map(int, sys.argv[2:7])
connection = display.Display()
screen = connection.screen()
window = screen.root.create_window(
    x, y, width, height, 0, screen.root_depth, background_pixel=screen.black_pixel,
    override_redirect=True, event_mask=X.KeyPressMask | X.KeyReleaseMask,
)
window.change_property(Xatom.WM_NAME, connection.intern_atom("UTF8_STRING"), 8, title.encode())
if claimed_pid:  # any program may write any number here
    window.change_property(connection.intern_atom("_NET_WM_PID"), Xatom.CARDINAL, 32, [claimed_pid])
window.map()
connection.sync()
print("window", window.id, flush=True)
while True:
    ready, _, _ = select.select([connection, sys.stdin], [], [])
    if sys.stdin in ready and not sys.stdin.readline():
        break
    while connection.pending_events():
        event = connection.next_event()
        if event.type in (X.KeyPress, X.KeyRelease):
            kind = "press" if event.type == X.KeyPress else "release"
            print(kind, event.detail, flush=True)
"""


def program_named(folder: Path, name: str) -> tuple[str, dict[str, str]]:
    """A copy of this Python under the file name `name` (as a game's executable is named) and
    the environment it needs to run from there: (executable, environment additions)."""
    executable = folder / name
    if not executable.exists():
        shutil.copy2(os.path.realpath(sys.executable), executable)
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    return str(executable), {
        "PYTHONHOME": sys.base_prefix,
        "PYTHONPATH": os.pathsep.join(site_packages),
    }


class WindowProgram:
    """A window made and owned by another process, as another program's window is.

    It records the key events the X server delivers to it (`key_events`), with their time.
    `claimed_pid` is written into _NET_WM_PID (a lookalike can claim the game's pid);
    `executable` (from `program_named`) runs it under another program name.
    """

    def __init__(
        self,
        display: str,
        title: str,
        geometry: tuple[int, int, int, int] = (0, 0, 320, 240),
        *,
        claimed_pid: int = 0,
        executable: tuple[str, dict[str, str]] | None = None,
    ) -> None:
        program, extra_env = executable or (sys.executable, {})
        self.process = subprocess.Popen(
            [program, "-c", _WINDOW_PROGRAM, title, *map(str, geometry), str(claimed_pid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**display_env(display), **extra_env},
        )  # fmt: skip
        assert self.process.stdout is not None
        first = self.process.stdout.readline().split()
        assert first[:1] == ["window"], f"the window program did not start: {first}"
        self.id = int(first[1])
        self.pid = self.process.pid
        self.display = display
        self.events: list[tuple[float, str, int]] = []
        """(monotonic time, "press" or "release", keycode) of every key event received."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, code = line.split()
            self.events.append((time.monotonic(), kind, int(code)))

    def focus(self) -> None:
        focus_window(self.display, self.id)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)

    def __enter__(self) -> WindowProgram:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
