"""The game window: what capture and the keyboard backend need to know about it.

A `GameWindow` is a handle to "the game's window", not to one OS window: when the game closes
and opens again, `reacquire()` points the same handle at the new window, so callers that kept
a bound method (the keyboard backend keeps `has_focus`) follow it without being rewired.

Coordinates are absolute physical screen pixels, the space mss grabs in: on X11 the root
window's, on Windows the virtual screen's with the process made per-monitor DPI aware.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agent.errors import CharlesError, one_line
from agent.types import Region

log = logging.getLogger(__name__)

MATCH_MODES = ("exact", "substring")
SEEN_TITLES_SHOWN = 8
SEEN_TITLE_LENGTH = 40

Owner = Callable[[], int]
"""Gives the process id whose window is the game (the bundled game Charles started or talks
to); raises WindowError when that process cannot be told (yet). Asked at every (re)acquire."""


@dataclass(frozen=True)
class WindowQuery:
    """Which window is the game: what `game.title`, `game.match` and `game.process` say.

    `process` (the game's executable file name, e.g. "GTA5.exe"; "" for any) must be given for
    `match = "substring"`: a title that merely contains `title` (a browser tab "Grand Theft Auto
    V cheats", an editor "notes on ...") must never receive keys, so a loose title needs a
    second, firmer proof. `owner` (the bundled game) admits only that process's windows.
    """

    title: str
    match: str = "exact"
    process: str = ""
    owner: Owner | None = None

    def __post_init__(self) -> None:
        if self.match not in MATCH_MODES:
            raise ValueError(f"match must be one of {MATCH_MODES}, got {self.match!r}")
        if self.match == "substring" and not self.process and self.owner is None:
            raise ValueError("a substring title match needs the game's process (or owner)")


class WindowError(CharlesError):
    """The game window is missing, minimised, zero-size, or there is no display to look on."""


@runtime_checkable
class GameWindow(Protocol):
    """The window (or fixed screen region) that is captured and driven."""

    title: str
    """The window's title as the OS reports it (for the console and messages)."""

    @property
    def handle(self) -> int:
        """The OS window keyboard input must go to (X window id, HWND); 0 when there is none.

        It names the window to another process (the controller process checks focus on it).
        """
        ...

    def region(self) -> Region:
        """Client area in absolute physical screen pixels, read now (follows moves).

        Raises WindowError when the window is gone, minimised or has zero size.
        """
        ...

    def exists(self) -> bool:
        """True while the targeted window exists (it may still be minimised)."""
        ...

    def has_focus(self) -> bool:
        """True while keyboard input goes to this window. Cheap; never raises for a gone window."""
        ...

    def reacquire(self) -> None:
        """Look for the window again by the original query and target what is found.

        Raises WindowError when nothing matches (yet).
        """
        ...


def title_matches(title: str, query: str, match: str) -> bool:
    """`exact`: equal strings; `substring`: `query` occurs in `title`, ignoring case."""
    if match == "exact":
        return title == query
    if match == "substring":
        return query.casefold() in title.casefold()
    raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")


@dataclass(frozen=True)
class Candidate:
    """A window whose title matched, as a platform backend found it."""

    handle: Any
    """The backend's window object (a python-xlib Window, a Windows HWND)."""
    title: str
    shown: bool
    """Mapped and viewable (X11); visible and not minimised (Windows)."""
    width: int
    height: int
    pid: int | None = None
    """The process that created the window, as the window system itself knows it (X11: the
    X-Resource extension's client pid; Windows: GetWindowThreadProcessId), never a property
    the window's program wrote; None when it cannot be told (a remote X client)."""
    program: str | None = None
    """File name of that process's executable (filled in when `WindowQuery.process` asks)."""


def choose(
    candidates: Sequence[Candidate],
    query: WindowQuery,
    seen: Iterable[str],
    hint: str = "",
    pid: int | None = None,
) -> Candidate:
    """The game window among those whose title matched; WindowError when none is certain.

    Input goes where this points, so it never guesses: with `pid`, only that process's windows
    count (a lookalike title elsewhere is ignored); with `query.process`, only windows of a
    program of that name; a window titled exactly `query.title` beats ones whose titles merely
    contain it; and windows of two different titles that both merely contain it are refused as
    ambiguous. Among windows of the one chosen title the largest wins (toolkits keep small
    helper windows with the same title). `seen` is every title the backend saw (for the
    not-found message); `hint` is appended to that message (e.g. a note about Wayland).
    """
    title = query.title
    if pid is not None:
        others = sum(c.pid != pid for c in candidates)
        candidates = [c for c in candidates if c.pid == pid]
        if not candidates:
            raise WindowError(not_owned_message(title, pid, others))
    if query.process:
        strangers = [c for c in candidates if not same_program(c.program, query.process)]
        candidates = [c for c in candidates if same_program(c.program, query.process)]
        if strangers and not candidates:
            raise WindowError(other_program_message(query, strangers))
    usable = [c for c in candidates if c.shown and c.width > 0 and c.height > 0]
    if usable:
        pool = [c for c in usable if c.title == title] or usable
        titles = list(dict.fromkeys(c.title for c in pool))
        if len(titles) > 1:
            raise WindowError(ambiguous_message(title, titles))
        pool.sort(key=lambda c: -c.width * c.height)
        if len(usable) > 1:
            log.info(
                "%d windows match %r; using %r (%dx%d)",
                len(usable), title, pool[0].title, pool[0].width, pool[0].height,
            )  # fmt: skip
        return pool[0]
    hidden = [c for c in candidates if not c.shown]
    if hidden:
        raise WindowError(hidden_message(hidden[0].title))
    if candidates:
        raise WindowError(zero_size_message(candidates[0].title))
    raise WindowError(not_found_message(title, query.match, seen, hint))


def same_program(program: str | None, wanted: str) -> bool:
    """Whether executable file name `program` is `wanted` (ignoring case, as Windows does)."""
    return program is not None and program.casefold() == wanted.casefold()


def other_program_message(query: WindowQuery, strangers: Sequence[Candidate]) -> str:
    programs = sorted({c.program or "an unknown program" for c in strangers})
    listing = ", ".join(repr(_shorten(p)) for p in programs[:SEEN_TITLES_SHOWN])
    return (
        f"{len(strangers)} window(s) match {_shorten(query.title)!r} but belong to {listing}, "
        f"not to game.process {query.process!r}; Charles sends input only to the game's own "
        "program: start the game, or fix game.process in config.toml"
    )


def not_owned_message(query: str, pid: int, others: int) -> str:
    ignored = f"; ignored {others} window(s) with that title from other programs" if others else ""
    return f"no window titled {_shorten(query)!r} belongs to the game process {pid} yet{ignored}"


def ambiguous_message(query: str, titles: Sequence[str]) -> str:
    listing = ", ".join(repr(_shorten(one_line(t))) for t in titles[:SEEN_TITLES_SHOWN])
    if len(titles) > SEEN_TITLES_SHOWN:
        listing += f" (+{len(titles) - SEEN_TITLES_SHOWN} more)"
    return (
        f"{len(titles)} windows with different titles contain {_shorten(query)!r}: {listing}; "
        "Charles will not guess which one is the game: set game.title to the game's full "
        'window title with game.match = "exact"'
    )


def hidden_message(title: str) -> str:
    return f"the game window {title!r} is minimised or hidden; restore it so it can be captured"


def zero_size_message(title: str) -> str:
    return f"the game window {title!r} has zero size; restore or resize it"


def not_found_message(query: str, match: str, seen: Iterable[str], hint: str = "") -> str:
    """One line: what was looked for, a few titles that were there, and the fix."""
    unique = list(dict.fromkeys(one_line(t) for t in seen if t.strip()))
    shown = [_shorten(t) for t in unique[:SEEN_TITLES_SHOWN]]
    listing = ", ".join(repr(t) for t in shown) if shown else "none with a title"
    if len(unique) > len(shown):
        listing += f" (+{len(unique) - len(shown)} more)"
    how = "titled exactly" if match == "exact" else "with a title containing"
    return (
        f"no window {how} {query!r}; windows seen: {listing}; start the game or fix "
        f"game.title / game.match in config.toml{hint}"
    )


def _shorten(text: str) -> str:
    if len(text) <= SEEN_TITLE_LENGTH:
        return text
    return text[: SEEN_TITLE_LENGTH - 3] + "..."


def clip_to(region: Region, bounds: Region) -> Region | None:
    """The part of `region` inside `bounds`, or None when they do not overlap."""
    left = max(region.left, bounds.left)
    top = max(region.top, bounds.top)
    right = min(region.left + region.width, bounds.left + bounds.width)
    bottom = min(region.top + region.height, bounds.top + bounds.height)
    if right <= left or bottom <= top:
        return None
    return Region(left, top, right - left, bottom - top)


class FixedRegion:
    """An explicit screen rectangle from config (`game.region`) instead of a window.

    It always exists and never moves. A bare rectangle belongs to no application, so it cannot
    tell whether the game has keyboard focus: `has_focus()` asks `focus_window`, the game's
    window found by title, and is False without one (the keyboard backend refuses such a
    region rather than type into whatever window has focus).
    """

    def __init__(self, region: Region, focus_window: GameWindow | None = None) -> None:
        self._region = region
        self.focus_window = focus_window
        self.title = (
            f"screen region {region.width}x{region.height} at ({region.left}, {region.top})"
        )

    def region(self) -> Region:
        return self._region

    def exists(self) -> bool:
        return True

    def has_focus(self) -> bool:
        return self.focus_window is not None and self.focus_window.has_focus()

    @property
    def handle(self) -> int:
        return self.focus_window.handle if self.focus_window is not None else 0

    def reacquire(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"FixedRegion({self._region})"
