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
    WindowError,
    WindowQuery,
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
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000

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


def find_window(query: WindowQuery) -> Win32Window:
    """The visible top-level window `query` names (see `agent.capture.window.choose`)."""
    make_dpi_aware()
    window = Win32Window(query)
    window.reacquire()
    return window


def attach(hwnd: int) -> Win32Window:
    """A handle to window `hwnd` that another process identified as the game (for the
    controller process's focus check; it never looks for a window itself)."""
    window = Win32Window(None)
    window.target(hwnd)
    return window


def program_of(pid: int) -> str | None:
    """The file name of process `pid`'s executable (QueryFullProcessImageNameW), or None."""
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.QueryFullProcessImageNameW.argtypes = [
        wintypes.HANDLE, wintypes.DWORD, wintypes.LPWSTR, ctypes.POINTER(wintypes.DWORD)
    ]  # fmt: skip
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    process = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not process:
        return None
    try:
        size = wintypes.DWORD(32768)
        buffer = ctypes.create_unicode_buffer(size.value)
        if not kernel32.QueryFullProcessImageNameW(process, 0, buffer, ctypes.byref(size)):
            return None
        return buffer.value.replace("/", "\\").rsplit("\\", 1)[-1]
    finally:
        kernel32.CloseHandle(process)


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
        query: WindowQuery | None,
        *,
        user32: Any = None,
        enum_windows: Any = _enum_windows,
        program_of: Any = program_of,
    ) -> None:
        self._user32 = user32 if user32 is not None else _user32()
        self._enum_windows = enum_windows
        self._program_of = program_of
        self._query = query
        self._hwnd: int | None = None
        self.title = query.title if query is not None else ""

    @property
    def handle(self) -> int:
        """The OS window keys go to (`GameWindow.handle`): the HWND, 0 before one is found."""
        return self._hwnd or 0

    def reacquire(self) -> None:
        if self._query is None:
            raise WindowError("this window handle was attached by id and cannot look again")
        owner = self._query.owner
        pid = owner() if owner is not None else None
        candidates, seen = self._enumerate(self._query)
        chosen = choose(candidates, self._query, seen, pid=pid)
        self._hwnd = chosen.handle  # one reference assignment: safe for readers on other threads
        self.title = chosen.title

    def target(self, hwnd: int) -> None:
        """Point this handle at window `hwnd` (0: none; has_focus is then False)."""
        self._hwnd = hwnd or None

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

    def _enumerate(self, query: WindowQuery) -> tuple[list[Candidate], list[str]]:
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
            if not title_matches(title, query.title, query.match):
                continue
            rect = wintypes.RECT()
            user32.GetClientRect(hwnd, ctypes.byref(rect))
            shown = not user32.IsIconic(hwnd)
            pid = wintypes.DWORD(0)
            user32.GetWindowThreadProcessId(hwnd, ctypes.byref(pid))
            # The window's thread's process, as Windows itself records it: a program cannot
            # claim another's window.
            owner = pid.value or None
            program = self._program_of(owner) if query.process and owner else None
            candidates.append(
                Candidate(hwnd, title, shown, rect.right, rect.bottom, owner, program)
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
