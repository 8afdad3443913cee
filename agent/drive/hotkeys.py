"""Global hotkeys (pause/resume, quit) through a pynput keyboard listener."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from agent.capture.screen import explain_display_loss
from agent.errors import CharlesError, log_failure
from agent.runtime.liveness import Failures

log = logging.getLogger(__name__)

PART = "hotkeys"
"""How the hotkeys' failure is named in the session's Failures."""


def key_name(key: Any) -> str | None:
    """pynput key -> the name config.toml uses ("f8", "esc", "q"); None when it has none."""
    char = getattr(key, "char", None)
    if char:
        return char.lower()
    name = getattr(key, "name", None)
    return name.lower() if name else None


class Hotkeys:
    """Calls `actions[name]()` when the key called `name` is pressed, in any window.

    Once per press: a key held down makes the system repeat its press (X11 and Windows both
    do, ~25 times a second after ~0.5 s), and a record or pause key that toggled on each
    repeat would end up in a state nobody chose. A press of a key that is down already is such
    a repeat and is ignored until the key is released. Were a release ever missed, the next
    press is ignored and its own release clears the key, so a key is never lost for long.

    pynput imports its platform backend at import time (on X11 it needs DISPLAY), so the import
    happens in `start()`. A failing action, and the listener's own death (the X server went
    away), are logged and reported to `failures`: the drive loop stops on it, because a session
    whose pause and quit keys no longer work must not go on driving.
    """

    def __init__(
        self, actions: Mapping[str, Callable[[], None]], failures: Failures | None = None
    ) -> None:
        self._actions = {name.lower(): action for name, action in actions.items()}
        self._listener: Any = None
        self._held: set[str] = set()
        """Keys with an action that are down now (touched only on the listener's thread)."""
        self._failures = failures if failures is not None else Failures()

    @property
    def error(self) -> BaseException | None:
        """Why the hotkeys stopped working (the listener died, an action failed), if they did."""
        return self._failures.of(PART)

    def start(self) -> None:
        self._listener = start_key_listener(self._on_press, self._on_release, self._listener_died)

    def _listener_died(self, error: Exception) -> None:
        explained = explain_display_loss(error)
        self._failures.report(PART, explained)
        log_failure(log, "hotkeys stopped working", explained)

    def _on_press(self, key: Any) -> None:
        name = key_name(key) or ""
        action = self._actions.get(name)
        if action is None or name in self._held:
            return
        self._held.add(name)
        try:
            action()
        except Exception as error:  # reported and logged; the drive loop stops on it
            self._failures.report(PART, error)
            log.exception("hotkey action failed")

    def _on_release(self, key: Any) -> None:
        self._held.discard(key_name(key) or "")

    def stop(self) -> None:
        if self._listener is not None:
            stop_key_listener(self._listener)
            self._listener = None


def start_key_listener(
    on_press: Callable[[Any], None],
    on_release: Callable[[Any], None] | None,
    on_death: Callable[[Exception], None],
) -> Any:
    """A pynput keyboard listener, started and ready. Its thread's death (the X server went
    away) goes to `on_death` instead of threading's excepthook, which would print it."""
    from pynput import keyboard

    class Listener(keyboard.Listener):  # type: ignore[misc, valid-type]
        def run(self) -> None:
            try:
                super().run()
            except Exception as error:
                on_death(error)

    listener = Listener(on_press=on_press, on_release=on_release)
    listener.daemon = True
    listener.start()
    listener.wait()
    return listener


def stop_key_listener(listener: Any) -> None:
    """Stop a listener from `start_key_listener` and wait for its thread: it holds X
    connections that must close before the display (possibly our own Xvfb) goes away."""
    try:
        listener.stop()
    except Exception as error:
        # With the X server gone the listener cannot be told anything, and it is dead
        # already; this must not hide the error that ended the session. Its own closed
        # connection says so even while the server's socket still lingers.
        explained = explain_display_loss(error)
        if not (_x_connection_lost(error) or isinstance(explained, CharlesError)):
            raise
        log.debug("key listener could not be stopped: %s", explained)
    _unblock_x11_listener(listener)
    listener.join(timeout=2.0)


def _x_connection_lost(error: BaseException) -> bool:
    """True for Xlib's own word that its connection to the X server is closed."""
    try:
        from Xlib.error import ConnectionClosedError
    except ImportError:  # no Xlib (Windows): not an X connection
        return False
    return isinstance(error, ConnectionClosedError)


def _unblock_x11_listener(listener: Any) -> None:
    """Make pynput's X11 listener thread really end now.

    On X11 pynput stops its XRecord loop by disabling the record context over the very
    connection the loop is blocked reading, so the request waits for the next key or mouse
    event. Disabling the context from a fresh connection ends the loop at once.
    """
    context = getattr(listener, "_context", None)
    if not sys.platform.startswith("linux") or context is None:
        return
    from Xlib import display as xdisplay
    from Xlib.error import DisplayError, XError

    try:
        connection = xdisplay.Display()
    except (DisplayError, OSError):
        return  # the display is gone already, and with it the listener's connections
    try:
        connection.record_disable_context(context)
        connection.sync()
    except (XError, OSError):
        log.debug("could not disable the hotkey listener's record context", exc_info=True)
    finally:
        connection.close()
