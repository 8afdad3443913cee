"""Finding and following the game window on Windows (ctypes only, no pywin32).

The process is made per-monitor DPI aware before any coordinate is read: otherwise, under
display scaling (125 %, 150 %), Windows reports scaled ("logical") coordinates that do not match
the physical pixels mss grabs, and the capture lands beside the game.

This module imports on every platform; `ctypes.windll` is touched only inside functions that
run on Windows.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from ctypes import wintypes
from typing import Any

from agent.capture.window import (
    Candidate,
    Owner,
    WindowError,
    choose,
    hidden_message,
    title_matches,
    zero_size_message,
)
from agent.types import Region

log = logging.getLogger(__name__)

# DPI_AWARENESS_CONTEXT_PER_MONITOR_AWARE_V2 (Windows 10 1703+); a pseudo-handle value.
PER_MONITOR_AWARE_V2 = -4
PROCESS_PER_MONITOR_DPI_AWARE = 2
DWMWA_CLOAKED = 14

_dpi_lock = threading.Lock()
_dpi_done = False


def make_dpi_aware() -> None:
    """Make this process per-monitor DPI aware (once; later calls do nothing).

    The newest API that exists wins. Each fails harmlessly when awareness was already set (by
    a manifest, or by mss, which sets the older per-monitor level on its own).
    """
    global _dpi_done
    with _dpi_lock:
        if _dpi_done:
            return
        _dpi_done = True
        user32 = ctypes.windll.user32
        try:
            user32.SetProcessDpiAwarenessContext.argtypes = [ctypes.c_void_p]
            user32.SetProcessDpiAwarenessContext.restype = wintypes.BOOL
            if user32.SetProcessDpiAwarenessContext(ctypes.c_void_p(PER_MONITOR_AWARE_V2)):
                return
        except AttributeError:  # before Windows 10 1703
            pass
        try:
            ctypes.windll.shcore.SetProcessDpiAwareness(PROCESS_PER_MONITOR_DPI_AWARE)
            return
        except (AttributeError, OSError):  # before Windows 8.1
            pass
        user32.SetProcessDPIAware()


def _user32() -> Any:
    user32 = ctypes.WinDLL("user32", use_last_error=True)
    user32.GetWindowTextLengthW.argtypes = [wintypes.HWND]
    user32.GetWindowTextW.argtypes = [wintypes.HWND, wintypes.LPWSTR, ctypes.c_int]
    for name in ("IsWindow", "IsWindowVisible", "IsIconic"):
        getattr(user32, name).argtypes = [wintypes.HWND]
        getattr(user32, name).restype = wintypes.BOOL
    user32.GetClientRect.argtypes = [wintypes.HWND, ctypes.POINTER(wintypes.RECT)]
    user32.ClientToScreen.argtypes = [wintypes.HWND, ctypes.POINTER(wintypes.POINT)]
    user32.GetForegroundWindow.restype = wintypes.HWND
    user32.GetWindowThreadProcessId.argtypes = [wintypes.HWND, ctypes.POINTER(wintypes.DWORD)]
    user32.GetWindowThreadProcessId.restype = wintypes.DWORD
    return user32


def find_window(title: str, match: str, owner: Owner | None = None) -> Win32Window:
    """The visible top-level window whose title matches (and, with `owner`, is that process's)."""
    make_dpi_aware()
    window = Win32Window(title, match, owner)
    window.reacquire()
    return window


def _enum_windows(user32: Any) -> list[int]:
    """Every top-level window handle, via EnumWindows (its callback type exists on Windows only)."""
    handles: list[int] = []

    @ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.HWND, wintypes.LPARAM)
    def collect(hwnd: int, _lparam: int) -> bool:
        handles.append(hwnd)
        return True

    user32.EnumWindows(collect, 0)
    return handles


class Win32Window:
    """A handle to the game window on Windows (see `agent.capture.window.GameWindow`).

    `user32` and `enum_windows` replace the real DLL and EnumWindows (tests on other systems).
    """

    def __init__(
        self,
        query: str,
        match: str,
        owner: Owner | None = None,
        *,
        user32: Any = None,
        enum_windows: Any = _enum_windows,
    ) -> None:
        self._user32 = user32 if user32 is not None else _user32()
        self._enum_windows = enum_windows
        self._query = query
        self._match = match
        self._owner = owner
        self._hwnd: int | None = None
        self.title = query

    def reacquire(self) -> None:
        pid = self._owner() if self._owner is not None else None
        candidates, seen = self._enumerate()
        chosen = choose(candidates, self._query, self._match, seen, pid=pid)
        self._hwnd = chosen.handle  # one reference assignment: safe for readers on other threads
        self.title = chosen.title

    def region(self) -> Region:
        hwnd = self._hwnd
        user32 = self._user32
        if hwnd is None or not user32.IsWindow(hwnd):
            raise WindowError(f"the game window {self.title!r} was closed")
        if user32.IsIconic(hwnd) or not user32.IsWindowVisible(hwnd):
            raise WindowError(hidden_message(self.title))
        rect = wintypes.RECT()
        origin = wintypes.POINT(0, 0)
        if not user32.GetClientRect(hwnd, ctypes.byref(rect)) or not user32.ClientToScreen(
            hwnd, ctypes.byref(origin)
        ):
            raise WindowError(f"the game window {self.title!r} was closed")
        # GetClientRect's left/top are always 0: right/bottom are the client size.
        if rect.right <= 0 or rect.bottom <= 0:
            raise WindowError(zero_size_message(self.title))
        return Region(origin.x, origin.y, rect.right, rect.bottom)

    def exists(self) -> bool:
        hwnd = self._hwnd
        return hwnd is not None and bool(self._user32.IsWindow(hwnd))

    def has_focus(self) -> bool:
        """True when the game window is the foreground window (its own dialogs do not count)."""
        hwnd = self._hwnd
        return hwnd is not None and self._user32.GetForegroundWindow() == hwnd

    def __repr__(self) -> str:
        return f"Win32Window({self._hwnd}, {self.title!r})"

    def _enumerate(self) -> tuple[list[Candidate], list[str]]:
        user32 = self._user32
        candidates: list[Candidate] = []
        seen: list[str] = []
        for hwnd in self._enum_windows(user32):
            # Hidden and cloaked windows (IME helpers, suspended store apps) are not what a
            # user means by "a window", and a game's hidden helper windows must not win.
            if not user32.IsWindowVisible(hwnd) or _cloaked(hwnd):
                continue
            title = _window_text(user32, hwnd)
            if not title:
                continue
            seen.append(title)
            if not title_matches(title, self._query, self._match):
                continue
            rect = wintypes.RECT()
            user32.GetClientRect(hwnd, ctypes.byref(rect))
            shown = not user32.IsIconic(hwnd)
            pid = wintypes.DWORD(0)
            user32.GetWindowThreadProcessId(hwnd, ctypes.byref(pid))
            candidates.append(
                Candidate(hwnd, title, shown, rect.right, rect.bottom, pid.value or None)
            )
        return candidates, seen


def _window_text(user32: Any, hwnd: int) -> str:
    length = user32.GetWindowTextLengthW(hwnd)
    if length <= 0:
        return ""
    buffer = ctypes.create_unicode_buffer(length + 1)
    user32.GetWindowTextW(hwnd, buffer, length + 1)
    return buffer.value


def _cloaked(hwnd: int) -> bool:
    value = ctypes.c_int(0)
    try:
        result = ctypes.windll.dwmapi.DwmGetWindowAttribute(
            wintypes.HWND(hwnd), DWMWA_CLOAKED, ctypes.byref(value), ctypes.sizeof(value)
        )
    except (AttributeError, OSError):
        return False
    return result == 0 and value.value != 0
