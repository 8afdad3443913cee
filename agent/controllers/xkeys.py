"""Key events for the game's X window and no other (X11, python-xlib).

pynput sends a key to whichever window has the focus when the event goes out, so a key released
just after the focus moved (to a browser, an editor) reaches that window, and the game never
hears the release. This sender addresses every press and release to the one window the drive
identified as the game (XSendEvent to that window, delivered to the client that created it):
no event can reach another window, whatever the focus does meanwhile.

It has pynput's `press(key)` / `release(key)` with pynput's key objects, so the keyboard backend
uses it in pynput's place. Keys are sent without modifiers (a configured "W" is the W key).
"""

from __future__ import annotations

import threading
from typing import Any

from Xlib import XK, X
from Xlib.error import XError
from Xlib.protocol import event

from agent.capture.x11 import connect
from agent.errors import ConfigError


def keysym_of(key: Any) -> int:
    """The X keysym of a pynput key: its virtual key (pynput's X11 keys carry the keysym), else
    its character (Latin-1 keysyms are the code point; others 0x1000000 + it, per X11)."""
    vk = getattr(key, "vk", None)
    if vk is not None:
        return int(vk)
    key = getattr(key, "value", key)  # a pynput Key member wraps a KeyCode
    vk = getattr(key, "vk", None)
    if vk is not None:
        return int(vk)
    char = getattr(key, "char", None)
    if not char or len(char) != 1:
        raise ConfigError(f"keyboard key {key!r} has no X keysym; use a letter or a key name")
    code = ord(char)
    named = XK.string_to_keysym(char)
    if named:
        return named
    return code if code < 0x100 else 0x1000000 + code


class WindowKeySender:
    """Presses and releases keys in X window `window_id` only (0: no window; events dropped)."""

    def __init__(self, window_id: int = 0) -> None:
        self._connection = connect()
        # The game window may close at any moment; an event for it then finds no one, which
        # is not worth a line on stderr (the default handler prints every X error).
        self._connection.set_error_handler(_ignore_gone_window)
        self._root = self._connection.screen().root
        self._lock = threading.Lock()
        self._window: Any = None
        self._keycodes: dict[int, int] = {}
        self.aim(window_id)

    def aim(self, window_id: int) -> None:
        """Address later events to `window_id`; release every key first (the controller process
        goes neutral before it aims at another window)."""
        with self._lock:
            self._window = (
                self._connection.create_resource_object("window", window_id) if window_id else None
            )

    def press(self, key: Any) -> None:
        self._send(event.KeyPress, key)

    def release(self, key: Any) -> None:
        self._send(event.KeyRelease, key)

    def keycode(self, key: Any) -> int:
        """The keycode of `key` on this keyboard; ConfigError when the layout lacks it."""
        keysym = keysym_of(key)
        with self._lock:
            code = self._keycodes.get(keysym)
            if code is None:
                code = self._connection.keysym_to_keycode(keysym)
                if not code:
                    raise ConfigError(
                        f"keyboard key {key!r} is not on this keyboard layout; pick another key "
                        "in [controller.keyboard]"
                    )
                self._keycodes[keysym] = code
        return code

    def close(self) -> None:
        with self._lock:
            self._window = None
            self._connection.close()

    def _send(self, kind: Any, key: Any) -> None:
        code = self.keycode(key)
        with self._lock:
            window = self._window
            if window is None:
                return
            message = kind(
                time=X.CurrentTime, root=self._root, window=window, same_screen=1,
                child=X.NONE, root_x=0, root_y=0, event_x=0, event_y=0, state=0, detail=code,
            )  # fmt: skip
            try:
                # An empty event mask: delivered to the client that created the window (the
                # game), never propagated to any other window.
                window.send_event(message, event_mask=0, propagate=False)
                self._connection.sync()
            except XError:  # the game window closed meanwhile: nothing to press or release
                pass


def _ignore_gone_window(_error: Any, _request: Any) -> None:
    """This connection only sends key events to the game: its one possible error is BadWindow."""
