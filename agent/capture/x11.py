"""Finding and following the game window on X11 (python-xlib).

The window tree is walked from the root rather than read from _NET_CLIENT_LIST: under bare Xvfb
(tests, `charles drive` on a server) there is no window manager to keep that list. Titles come
from _NET_WM_NAME (UTF-8), else WM_NAME in whatever type the client used (SDL2 writes it as
UTF8_STRING, which a plain STRING read misses).

Which process made a window is asked of the X server itself (the X-Resource extension: the pid
of the client connection that created it, which the server reads from the socket), never read
from _NET_WM_PID, a property any program can write on its own windows.

One X connection per window handle, guarded by a lock: the capture thread calls `region()` and
the keyboard backend's thread calls `has_focus()`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from Xlib import X, Xatom
from Xlib import display as xdisplay
from Xlib.error import DisplayError, XError
from Xlib.ext import res

from agent.capture.screen import no_display_message
from agent.capture.window import (
    Candidate,
    WindowError,
    WindowQuery,
    choose,
    hidden_message,
    title_matches,
    zero_size_message,
)
from agent.types import Region

log = logging.getLogger(__name__)


def connect() -> xdisplay.Display:
    """Open the X display named by DISPLAY; WindowError when there is none."""
    if not os.environ.get("DISPLAY"):
        raise WindowError(no_display_message())
    try:
        return xdisplay.Display()
    except (DisplayError, OSError) as error:
        raise WindowError(no_display_message(error)) from None


def find_window(query: WindowQuery) -> X11Window:
    """The viewable window `query` names (see `agent.capture.window.choose`)."""
    connection = connect()
    try:
        window = X11Window(connection, query)
        window.reacquire()
    except BaseException:
        connection.close()
        raise
    return window


def attach(window_id: int) -> X11Window:
    """A handle to the window `window_id` that another process identified as the game.

    For the controller process (`agent.controllers.host`): it checks focus on the very window
    the drive chose, and never looks for one itself (`reacquire` is refused).
    """
    connection = connect()
    window = X11Window(connection, None)
    window.target(window_id)
    return window


def creator_pid(connection: xdisplay.Display, window: Any) -> int | None:
    """The pid of the X client that created `window`, as the X server knows it; None when the
    server cannot tell (a client on another machine) or lacks the X-Resource extension."""
    if not connection.has_extension("X-Resource"):
        return None
    reply = connection.res_query_client_ids([{"client": window.id, "mask": res.LocalClientPIDMask}])
    for found in reply.ids:
        if found.spec.mask == res.LocalClientPIDMask and len(found.value) == 1:
            return int(found.value[0])
    return None


def program_of(pid: int) -> str | None:
    """The file name of process `pid`'s executable (Linux /proc), None when it cannot be read."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


class X11Window:
    """A handle to the game window on one X display (see `agent.capture.window.GameWindow`)."""

    def __init__(self, connection: xdisplay.Display, query: WindowQuery | None) -> None:
        self._connection = connection
        self._root = connection.screen().root
        self._query = query
        self._lock = threading.Lock()
        self._window: Any = None
        self._utf8 = connection.intern_atom("UTF8_STRING")
        self._net_wm_name = connection.intern_atom("_NET_WM_NAME")
        self.title = query.title if query is not None else ""

    @property
    def id(self) -> int:
        """The X window id currently targeted (0 before the first successful find)."""
        return 0 if self._window is None else self._window.id

    handle = id
    """The OS window keys go to (`GameWindow.handle`): here the X window id."""

    def reacquire(self) -> None:
        if self._query is None:
            raise WindowError("this window handle was attached by id and cannot look again")
        owner = self._query.owner
        pid = owner() if owner is not None else None
        with self._lock:
            candidates, seen = self._walk(self._query)
            chosen = choose(candidates, self._query, seen, _wayland_hint(), pid)
            self._window = chosen.handle
            self.title = chosen.title
        log.debug("targeting X window 0x%x %r", chosen.handle.id, chosen.title)

    def target(self, window_id: int) -> None:
        """Point this handle at X window `window_id` (0: no window; has_focus is then False)."""
        with self._lock:
            if window_id == self.id:
                return
            self._window = (
                self._connection.create_resource_object("window", window_id) if window_id else None
            )

    def region(self) -> Region:
        with self._lock:
            window = self._require_window()
            try:
                attributes = window.get_attributes()
                geometry = window.get_geometry()
                origin = self._root.translate_coords(window, 0, 0)
            except XError:
                raise WindowError(f"the game window {self.title!r} was closed") from None
        if attributes.map_state != X.IsViewable:
            raise WindowError(hidden_message(self.title))
        if geometry.width <= 0 or geometry.height <= 0:
            raise WindowError(zero_size_message(self.title))
        return Region(origin.x, origin.y, geometry.width, geometry.height)

    def exists(self) -> bool:
        with self._lock:
            if self._window is None:
                return False
            try:
                self._window.get_attributes()
            except XError:
                return False
            return True

    def has_focus(self) -> bool:
        """True when key events go to this window, one of its children or its (WM) frame.

        A frame is an ancestor that a reparenting window manager puts around the window; it
        takes the focus for the whole application, and the game's keys arrive through it.

        Without a window manager the focus is usually PointerRoot: keys then go to whichever
        window is under the pointer, so that is what is checked.
        """
        with self._lock:
            if self._window is None:
                return False
            try:
                focus = self._connection.get_input_focus().focus
                if not hasattr(focus, "id"):  # X.NONE or X.PointerRoot (plain ints)
                    return focus == X.PointerRoot and self._under_pointer()
                if focus.id == self._root.id:
                    return self._under_pointer()
                return self._is_ancestor(self._window, focus) or self._is_ancestor(
                    focus, self._window
                )
            except XError:  # the window (or the focused one) went away while we looked
                return False

    def close(self) -> None:
        """Close the X connection; the handle is unusable afterwards."""
        with self._lock:
            self._window = None
            self._connection.close()

    def __repr__(self) -> str:
        return f"X11Window(0x{self.id:x}, {self.title!r})"

    def _require_window(self) -> Any:
        if self._window is None:
            raise WindowError(f"no window titled {self.title!r} has been found yet")
        return self._window

    def _under_pointer(self) -> bool:
        child = self._root.query_pointer().child
        while hasattr(child, "id"):  # X.NONE (0) once below the deepest window
            if child.id == self._window.id:
                return True
            child = child.query_pointer().child
        return False

    def _is_ancestor(self, ancestor: Any, window: Any) -> bool:
        """True when `ancestor` is `window` or one of its parents below the root."""
        while window.id != self._root.id:
            if window.id == ancestor.id:
                return True
            window = window.query_tree().parent
        return False

    def _walk(self, query: WindowQuery) -> tuple[list[Candidate], list[str]]:
        """Every window whose title matches, and the titles of viewable windows seen."""
        candidates: list[Candidate] = []
        seen_viewable: list[str] = []
        seen_other: list[str] = []
        pending = [self._root]
        while pending:
            window = pending.pop()
            try:
                pending.extend(window.query_tree().children)
                title = self._title_of(window)
                if title is None:
                    continue
                viewable = window.get_attributes().map_state == X.IsViewable
                (seen_viewable if viewable else seen_other).append(title)
                if not title_matches(title, query.title, query.match):
                    continue
                geometry = window.get_geometry()
                pid = creator_pid(self._connection, window)
            except XError:  # the window went away while we looked at it
                continue
            program = program_of(pid) if query.process and pid is not None else None
            candidates.append(
                Candidate(window, title, viewable, geometry.width, geometry.height, pid, program)
            )
        return candidates, seen_viewable + seen_other

    def _title_of(self, window: Any) -> str | None:
        prop = window.get_full_property(self._net_wm_name, self._utf8)
        if prop is None or not prop.value:
            prop = window.get_full_property(Xatom.WM_NAME, X.AnyPropertyType)
        if prop is None or prop.format != 8 or not prop.value:
            return None
        raw = prop.value if isinstance(prop.value, bytes) else bytes(prop.value)
        # STRING is Latin-1 by the ICCCM; UTF8_STRING and COMPOUND_TEXT's ASCII part are UTF-8.
        if prop.property_type == Xatom.STRING:
            return raw.decode("latin-1")
        return raw.decode("utf-8", "replace")


def _wayland_hint() -> str:
    if not os.environ.get("WAYLAND_DISPLAY"):
        return ""
    return (
        " (this is a Wayland session: only X11/XWayland windows can be found; run the game "
        "under XWayland or set game.region)"
    )
