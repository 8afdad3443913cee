"""Window finding and the capture thread, against a real X server (Xvfb) and real mss grabs.

Test windows are plain X windows made with python-xlib on a second connection, painted with
known colours. There is no window manager: nothing moves, decorates or focuses a window
except the test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.capture import Grabber, WindowError, WindowQuery, find_window, fixed_region
from agent.capture.window import Candidate, choose, not_found_message, title_matches
from agent.capture.x11 import attach
from agent.runtime.slot import Slot
from agent.types import Frame, Region
from tests.helpers.clock import FakeClock
from tests.helpers.waiting import wait_until
from tests.helpers.xvfb import WindowProgram, program_named

Xlib = pytest.importorskip("Xlib")
from Xlib import X, Xatom  # noqa: E402
from Xlib import display as xdisplay  # noqa: E402

THIS_PROGRAM = os.path.basename(os.readlink("/proc/self/exe")) if os.path.exists("/proc") else ""
"""The file name of the executable running these tests: the program of the painter's windows."""

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


class Painter:
    """Makes and paints test windows on its own X connection; destroys them afterwards."""

    def __init__(self, name: str) -> None:
        self.connection = xdisplay.Display(name)
        self.screen = self.connection.screen()
        self.root = self.screen.root
        self.windows: list[Any] = []

    def window(
        self,
        title: str | None,
        x: int,
        y: int,
        width: int,
        height: int,
        colour: tuple[int, int, int] = RED,
        *,
        parent: Any = None,
        utf8_wm_name: bool = False,
        net_wm_name: bool = False,
        mapped: bool = True,
        pid: int | None = None,
    ) -> Any:
        window = (parent or self.root).create_window(
            x, y, width, height, 0, self.screen.root_depth,
            background_pixel=_pixel(colour), override_redirect=True,
        )  # fmt: skip
        if title is not None:
            if net_wm_name:
                utf8 = self.connection.intern_atom("UTF8_STRING")
                atom = self.connection.intern_atom("_NET_WM_NAME")
                window.change_property(atom, utf8, 8, title.encode())
            elif utf8_wm_name:  # how SDL2 (pygame) sets it
                utf8 = self.connection.intern_atom("UTF8_STRING")
                window.change_property(Xatom.WM_NAME, utf8, 8, title.encode())
            else:
                window.set_wm_name(title)
        if pid is not None:  # as SDL and other toolkits set it
            atom = self.connection.intern_atom("_NET_WM_PID")
            window.change_property(atom, Xatom.CARDINAL, 32, [pid])
        if mapped:
            window.map()
        self.connection.sync()
        self.windows.append(window)
        return window

    def fill(
        self, window: Any, colour: tuple[int, int, int], x: int, y: int, w: int, h: int
    ) -> None:
        gc = window.create_gc(foreground=_pixel(colour))
        window.fill_rectangle(gc, x, y, w, h)
        gc.free()
        self.connection.sync()

    def destroy(self, window: Any) -> None:
        self.windows.remove(window)
        window.destroy()
        self.connection.sync()

    def sync(self) -> None:
        self.connection.sync()

    def close(self) -> None:
        for window in reversed(self.windows):  # children before their parents
            with contextlib.suppress(Exception):
                window.destroy()
        self.connection.set_input_focus(X.PointerRoot, X.RevertToPointerRoot, X.CurrentTime)
        self.connection.sync()
        self.connection.close()


def _pixel(colour: tuple[int, int, int]) -> int:
    red, green, blue = colour
    return (red << 16) | (green << 8) | blue


def _bgra(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = colour
    return (blue, green, red)


@pytest.fixture
def painter(x_display: str) -> Iterator[Painter]:
    painter = Painter(x_display)
    yield painter
    painter.close()


def newest(slot: Slot[Frame], after: int = 0, timeout: float = 3.0) -> Frame:
    frame, seq = slot.wait_newer(after, timeout)
    assert frame is not None and seq > after, "no new frame arrived"
    return frame


@pytest.fixture
def grabbers() -> Iterator[list[Grabber]]:
    started: list[Grabber] = []
    yield started
    for grabber in started:
        grabber.stop()


# --- finding windows -------------------------------------------------------------------------


def test_find_by_exact_and_substring_title(painter: Painter) -> None:
    painter.window("Charles Test Game", 100, 50, 320, 240)
    painter.window("Charles Test Game - notes", 500, 50, 600, 400)

    exact = find_window(WindowQuery("Charles Test Game"))
    assert exact.title == "Charles Test Game"
    assert exact.region() == Region(100, 50, 320, 240)

    # Substring ignores case (and names the program); a title equal to the query beats a
    # larger window whose title merely contains it.
    loose = WindowQuery("Charles Test Game", "substring", process=THIS_PROGRAM)
    assert find_window(loose).title == "Charles Test Game"
    notes = find_window(WindowQuery("- NOTES", "substring", process=THIS_PROGRAM.upper()))
    assert notes.title == "Charles Test Game - notes"
    assert notes.region() == Region(500, 50, 600, 400)

    # Two different titles that both merely contain the query: Charles refuses to guess.
    with pytest.raises(WindowError, match=r"2 windows with different titles contain 'test game'"):
        find_window(WindowQuery("test game", "substring", process=THIS_PROGRAM))
    with pytest.raises(WindowError, match="titled exactly 'Charles Test'"):
        find_window(WindowQuery("Charles Test"))
    # A loose title with nothing firmer is not a rule Charles takes.
    with pytest.raises(ValueError, match="needs the game's process"):
        WindowQuery("Charles Test", "substring")


def test_a_lookalike_window_claiming_the_games_pid_is_never_the_game(x_display: str) -> None:
    """The bundled game is found by the process that made its window, as the X server knows it:
    a text editor naming the game, or a larger window that writes the game's pid into
    _NET_WM_PID (a property any program can set), is ignored."""
    with contextlib.ExitStack() as stack:
        game = stack.enter_context(
            WindowProgram(x_display, "Charles CarRacing", (300, 200, 320, 180))
        )
        stack.enter_context(
            WindowProgram(x_display, "notes on charles carracing - Text Editor", (0, 0, 900, 700))
        )
        impostor = stack.enter_context(
            WindowProgram(x_display, "Charles CarRacing", (0, 0, 1200, 900), claimed_pid=game.pid)
        )
        found = find_window(WindowQuery("Charles CarRacing", owner=lambda: game.pid))
        assert found.handle == game.id != impostor.id
        assert found.region() == Region(300, 200, 320, 180)

        # The game closes: the impostor is still there, claiming its pid, and is not taken.
        game.close()
        with pytest.raises(WindowError, match=r"belongs to the game process \d+ yet; ignored 1"):
            found.reacquire()

        # Reacquiring asks the owner again: the game restarted as another process.
        again = stack.enter_context(
            WindowProgram(x_display, "Charles CarRacing", (10, 20, 160, 90))
        )
        found = find_window(WindowQuery("Charles CarRacing", owner=lambda: again.pid))
        assert found.handle == again.id and found.region() == Region(10, 20, 160, 90)


def test_a_title_that_merely_contains_the_games_is_never_the_game(
    x_display: str, tmp_path: Path
) -> None:
    """A browser tab naming GTA V is not GTA V: not by exact title, and a substring rule must
    name the game's program, whose window alone then counts, before and after the game closes."""
    gta = program_named(tmp_path, "GTA5.exe")
    firefox = program_named(tmp_path, "firefox-esr")
    title = "Grand Theft Auto V"
    exact = WindowQuery(title)
    loose = WindowQuery(title, "substring", process="gta5.EXE")
    with WindowProgram(
        x_display, "Grand Theft Auto V cheats - Mozilla Firefox", (0, 0, 1000, 800),
        executable=firefox,
    ):  # fmt: skip
        with pytest.raises(WindowError, match="no window titled exactly 'Grand Theft Auto V'"):
            find_window(exact)
        with pytest.raises(WindowError) as caught:
            find_window(loose)
        assert "belong to 'firefox-esr', not to game.process 'gta5.EXE'" in str(caught.value)

        with WindowProgram(x_display, title, (50, 60, 640, 360), executable=gta) as game:
            assert find_window(exact).handle == game.id
            found = find_window(loose)
            assert found.handle == game.id and found.region() == Region(50, 60, 640, 360)
        # The game closed: looking again never falls back to the browser.
        with pytest.raises(WindowError, match=r"not to game\.process"):
            found.reacquire()


def test_finds_utf8_titles_the_way_toolkits_set_them(painter: Painter) -> None:
    painter.window("Fahrschüler SDL", 10, 10, 64, 48, utf8_wm_name=True)
    painter.window("Fahrschüler NET", 90, 10, 64, 48, net_wm_name=True)
    assert find_window(WindowQuery("Fahrschüler SDL")).region() == Region(10, 10, 64, 48)
    assert find_window(WindowQuery("Fahrschüler NET")).region() == Region(90, 10, 64, 48)


def test_not_found_names_the_titles_it_saw(painter: Painter) -> None:
    painter.window("Alpha Window", 0, 0, 50, 50)
    painter.window("Beta Window", 60, 0, 50, 50)
    with pytest.raises(WindowError) as caught:
        find_window(WindowQuery("Gamma", "substring", process=THIS_PROGRAM))
    message = str(caught.value)
    assert "\n" not in message
    assert "'Gamma'" in message
    assert "'Alpha Window'" in message and "'Beta Window'" in message
    assert "game.title" in message


def test_unmapped_window_is_a_hidden_error(painter: Painter) -> None:
    window = painter.window("Hidden Game", 10, 10, 100, 100, mapped=False)
    with pytest.raises(WindowError, match="'Hidden Game' is minimised or hidden"):
        find_window(WindowQuery("Hidden Game"))

    window.map()
    painter.sync()
    found = find_window(WindowQuery("Hidden Game"))
    assert found.region() == Region(10, 10, 100, 100)
    window.unmap()
    painter.sync()
    assert found.exists()
    with pytest.raises(WindowError, match="minimised or hidden"):
        found.region()
    painter.destroy(window)
    assert not found.exists()
    with pytest.raises(WindowError, match="was closed"):
        found.region()


def test_region_follows_moves_and_is_absolute_for_child_windows(painter: Painter) -> None:
    window = painter.window("Moving Game", 10, 20, 200, 100)
    found = find_window(WindowQuery("Moving Game"))
    assert found.region() == Region(10, 20, 200, 100)
    window.configure(x=300, y=400, width=250, height=150)
    painter.sync()
    assert found.region() == Region(300, 400, 250, 150)

    # A titled window inside an untitled frame (as under a reparenting window manager).
    frame = painter.window(None, 700, 300, 400, 300)
    painter.window("Framed Game", 5, 25, 390, 270, parent=frame)
    assert find_window(WindowQuery("Framed Game")).region() == Region(705, 325, 390, 270)


def test_has_focus_follows_the_input_focus(painter: Painter) -> None:
    game = painter.window("Focus Game", 100, 100, 200, 200)
    child = painter.window(None, 10, 10, 50, 50, parent=game)
    other = painter.window("Other App", 400, 100, 200, 200)
    found = find_window(WindowQuery("Focus Game"))
    connection = painter.connection

    def focus(target: Any) -> None:
        connection.set_input_focus(target, X.RevertToPointerRoot, X.CurrentTime)
        connection.sync()

    focus(game)
    assert found.has_focus()
    focus(other)
    assert not found.has_focus()
    focus(child)  # toolkits often focus an inner window
    assert found.has_focus()
    focus(X.NONE)
    assert not found.has_focus()

    # Under a reparenting window manager the focus is on the frame around the game.
    frame = painter.window(None, 700, 100, 300, 300)
    painter.window("Framed Focus Game", 5, 25, 290, 270, parent=frame)
    framed = find_window(WindowQuery("Framed Focus Game"))
    focus(frame)
    assert framed.has_focus() and not found.has_focus()

    # Without a window manager focus is usually PointerRoot: keys go to what is under the pointer.
    focus(X.PointerRoot)
    painter.root.warp_pointer(150, 150)
    painter.sync()
    assert found.has_focus()
    painter.root.warp_pointer(450, 150)
    painter.sync()
    assert not found.has_focus()
    painter.destroy(child)
    painter.destroy(game)
    assert not found.has_focus()

    # A handle aimed at no window (the controller process before the drive names one).
    nowhere = attach(0)
    try:
        assert not nowhere.has_focus() and not nowhere.exists()
        nowhere.target(other.id)
        focus(other)
        assert nowhere.has_focus() and nowhere.exists()
        nowhere.target(0)
        assert not nowhere.has_focus()
        with pytest.raises(WindowError, match="cannot look again"):
            nowhere.reacquire()
    finally:
        nowhere.close()


def test_no_display_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(WindowError, match=r"DISPLAY is not set.*starts Xvfb itself"):
        find_window(WindowQuery("Anything"))
    monkeypatch.setenv("DISPLAY", ":4077")
    with pytest.raises(WindowError, match=r"cannot connect to X display ':4077'"):
        find_window(WindowQuery("Anything"))


def test_fixed_region(painter: Painter) -> None:
    window = fixed_region(10, 20, 640, 360)
    assert window.region() == Region(10, 20, 640, 360)
    # A bare rectangle cannot tell whether the game has focus, so it never says it has.
    assert window.exists() and not window.has_focus()
    game = painter.window("Region Game", 10, 20, 640, 360)
    other = painter.window("Other Region App", 700, 20, 100, 100)
    guarded = fixed_region(10, 20, 640, 360, focus_window=find_window(WindowQuery("Region Game")))
    for target, focused in ((game, True), (other, False)):
        painter.connection.set_input_focus(target, X.RevertToPointerRoot, X.CurrentTime)
        painter.sync()
        assert guarded.has_focus() is focused
    with pytest.raises(WindowError, match="zero size"):
        fixed_region(0, 0, 0, 100)
    with pytest.raises(WindowError, match=r"not wholly on the screen \(1920x1080"):
        fixed_region(1800, 0, 200, 100)


# --- which window a drive takes (agent.drive.target) ----------------------------------------------


def _config(**game: object) -> Any:
    from agent.config import Config, ControllerConfig, GameConfig

    backend = game.pop("backend", "game")
    return Config(game=GameConfig(**game), controller=ControllerConfig(backend=backend))


@pytest.mark.filterwarnings("ignore:builtin type [Ss]wig:DeprecationWarning")
def test_the_drive_takes_the_window_config_names_by_its_rules(x_display: str) -> None:
    from agent.drive.target import acquire_window, is_bundled_game, window_query
    from agent.game.launcher import BundledGame
    from agent.runtime.signals import Stop

    loose = _config(title="Target Game", match="substring", process=THIS_PROGRAM)
    assert window_query(loose) == WindowQuery("Target Game", "substring", THIS_PROGRAM)
    assert is_bundled_game(_config()) and not is_bundled_game(_config(title="Target Game"))
    assert not is_bundled_game(_config(region=(0, 0, 10, 10)))
    with contextlib.ExitStack() as stack:
        game = stack.enter_context(WindowProgram(x_display, "Target Game", (40, 30, 200, 100)))
        stack.enter_context(WindowProgram(x_display, "Target Game - notes", (0, 0, 900, 700)))
        exact = acquire_window(_config(title="Target Game"), None, Stop())
        assert exact.handle == game.id and exact.region() == Region(40, 30, 200, 100)
        with pytest.raises(WindowError, match=r"not to game\.process 'GTA5\.exe'"):
            acquire_window(_config(title="Target", match="substring", process="GTA5.exe"),
                           None, Stop())  # fmt: skip

        # A region: the keyboard's focus window by the same rules; other backends need none.
        region = acquire_window(
            _config(title="Target Game", region=(0, 0, 64, 48), backend="keyboard"), None, Stop()
        )
        assert region.region() == Region(0, 0, 64, 48) and region.handle == game.id
        plain = acquire_window(_config(title="Nothing", region=(0, 0, 64, 48)), None, Stop())
        assert plain.handle == 0 and not plain.has_focus()
        with pytest.raises(WindowError, match="keyboard backend still needs the game's window"):
            acquire_window(
                _config(title="Target", region=(0, 0, 64, 48), backend="keyboard"), None, Stop()
            )

        # The bundled game: the window its own process made, never a lookalike's.
        bundled = stack.enter_context(
            WindowProgram(x_display, "Charles CarRacing", (300, 300, 160, 90))
        )
        stack.enter_context(
            WindowProgram(
                x_display, "Charles CarRacing", (0, 0, 1200, 900), claimed_pid=bundled.pid
            )
        )
        started = BundledGame(port=0, process=bundled.process)  # type: ignore[arg-type]
        found = acquire_window(_config(), started, Stop())
        assert found.handle == bundled.id and found.region() == Region(300, 300, 160, 90)


# --- pure parts shared by the X11 and Windows backends ----------------------------------------


def test_title_matching_and_choice() -> None:
    assert title_matches("Grand Theft Auto V", "theft auto", "substring")
    assert not title_matches("Grand Theft Auto V", "theft auto", "exact")
    assert title_matches("Grand Theft Auto V", "Grand Theft Auto V", "exact")
    with pytest.raises(ValueError):
        title_matches("a", "a", "regex")

    small = Candidate("small", "Game", True, 10, 10)
    large = Candidate("large", "Game", True, 800, 600)
    longer = Candidate("term", "vim Game", True, 1920, 1080)
    game, loose = WindowQuery("Game"), WindowQuery("game", "substring", process="vim")
    assert choose([small, longer, large], game, []).handle == "large"
    # The largest by area, not the widest: a toolkit's thin helper strip never wins.
    strip = Candidate("strip", "Game", True, 1000, 10)
    assert choose([strip, large], game, []).handle == "large"
    assert choose([Candidate("dot", "Game", True, 1, 1)], game, []).handle == "dot"
    for width, height in ((0, 5), (5, 0)):
        with pytest.raises(WindowError, match="zero size"):
            choose([Candidate("flat", "Game", True, width, height)], game, [])
    # Several windows of one title that merely contains the query: the largest.
    helper = Candidate("helper", "vim Game", True, 10, 10, program="vim")
    longer = Candidate("term", "vim Game", True, 1920, 1080, program="VIM")
    assert choose([helper, longer], loose, []).handle == "term"
    with pytest.raises(WindowError, match="will not guess"):
        notes = Candidate("x", "Game notes", True, 5, 5, program="vim")
        choose([helper, longer, notes], loose, [])
    # With a program name only that program's windows count.
    browser = Candidate("browser", "vim Game - Firefox", True, 3000, 2000, program="firefox")
    assert choose([browser, helper], loose, []).handle == "helper"
    with pytest.raises(WindowError, match=r"belong to 'firefox', not to game\.process 'vim'"):
        choose([browser], loose, [])
    # With a process id only that process's windows count.
    mine = Candidate("mine", "Game", True, 100, 100, pid=7)
    assert choose([large, mine], game, [], pid=7).handle == "mine"
    with pytest.raises(WindowError, match="belongs to the game process 8"):
        choose([large, mine], game, [], pid=8)
    minimised = Candidate("min", "Game", False, 0, 0)
    with pytest.raises(WindowError, match="minimised"):
        choose([minimised], game, [])
    with pytest.raises(WindowError, match="zero size"):
        choose([Candidate("z", "Game", True, 0, 0)], game, [])


def test_not_found_message_is_short() -> None:
    titles = [f"Window number {n} " + "x" * 80 for n in range(20)]
    titles += ["two\nlines", "", "dup", "dup"]
    message = not_found_message("Game", "substring", titles)
    assert "\n" not in message
    assert "'Window number 0 xxx" in message and "...'" in message
    assert "(+14 more)" in message  # 22 distinct non-empty titles, 8 shown
    assert len(message) < 600


class FakeUser32:
    """Stands in for user32.dll at the ctypes boundary: a desktop of top-level windows.

    Each window: title, visible, minimised, client size, client origin on the screen, process
    id. Out-parameters arrive as `ctypes.byref(x)`; `._obj` is the structure to fill.
    """

    def __init__(self) -> None:
        self.windows: dict[int, dict[str, Any]] = {}
        self.foreground = 0
        self.programs: dict[int, str] = {}
        """Executable file name of each process id (what QueryFullProcessImageNameW tells)."""

    def add(self, hwnd: int, title: str, **attributes: Any) -> None:
        window = {"visible": True, "iconic": False, "size": (640, 360), "origin": (0, 0)}
        self.windows[hwnd] = {**window, "title": title, "pid": 100, **attributes}

    def IsWindow(self, hwnd: int) -> bool:
        return hwnd in self.windows

    def IsWindowVisible(self, hwnd: int) -> bool:
        return self.windows[hwnd]["visible"]

    def IsIconic(self, hwnd: int) -> bool:
        return self.windows[hwnd]["iconic"]

    def GetWindowTextLengthW(self, hwnd: int) -> int:
        return len(self.windows[hwnd]["title"])

    def GetWindowTextW(self, hwnd: int, buffer: Any, size: int) -> int:
        buffer.value = self.windows[hwnd]["title"][: size - 1]
        return len(buffer.value)

    def GetClientRect(self, hwnd: int, rect: Any) -> bool:
        width, height = self.windows[hwnd]["size"]
        rect._obj.left, rect._obj.top, rect._obj.right, rect._obj.bottom = 0, 0, width, height
        return True

    def ClientToScreen(self, hwnd: int, point: Any) -> bool:
        point._obj.x, point._obj.y = self.windows[hwnd]["origin"]
        return True

    def GetWindowThreadProcessId(self, hwnd: int, pid: Any) -> int:
        pid._obj.value = self.windows[hwnd]["pid"]
        return 1

    def GetForegroundWindow(self) -> int:
        return self.foreground


def win32_window(user32: FakeUser32, query: WindowQuery) -> Any:
    from agent.capture.win32 import Win32Window

    window = Win32Window(
        query,
        user32=user32,
        enum_windows=lambda dll: list(dll.windows),
        program_of=lambda pid: user32.programs.get(pid),
    )
    window.reacquire()
    return window


def test_windows_backend_finds_follows_and_guards_the_game_window() -> None:
    user32 = FakeUser32()
    user32.add(1, "notes on Grand Theft Auto V - Notepad", size=(1900, 1000), pid=7)
    user32.add(2, "Grand Theft Auto V", size=(1280, 720), origin=(320, 180), pid=42)
    user32.add(3, "Grand Theft Auto V", visible=False, size=(4000, 4000), pid=42)  # a helper
    user32.add(4, "Discord", pid=9)
    user32.programs.update({7: "notepad.exe", 42: "GTA5.exe", 9: "Discord.exe"})

    game = win32_window(user32, WindowQuery("Grand Theft Auto V", "substring", "GTA5.exe"))
    assert game.title == "Grand Theft Auto V"  # the exact title beats the larger lookalike
    assert game.region() == Region(320, 180, 1280, 720)
    assert game.exists() and not game.has_focus()
    user32.foreground = 2
    assert game.has_focus()
    user32.foreground = 1  # the editor has focus: keys must not be sent
    assert not game.has_focus()

    # The window moves and is resized: region() reads it afresh.
    user32.windows[2].update(origin=(0, 0), size=(1920, 1080))
    assert game.region() == Region(0, 0, 1920, 1080)
    user32.windows[2]["iconic"] = True
    with pytest.raises(WindowError, match="minimised or hidden"):
        game.region()
    user32.windows[2].update(iconic=False, size=(0, 0))
    with pytest.raises(WindowError, match="zero size"):
        game.region()
    del user32.windows[2]
    assert not game.exists()
    with pytest.raises(WindowError, match="was closed"):
        game.region()

    # A title that merely contains the game's, of another program: never the game.
    loose = WindowQuery("Grand Theft Auto V", "substring", "gta5.exe")
    with pytest.raises(WindowError, match=r"belong to 'notepad\.exe', not to game\.process"):
        win32_window(user32, loose)
    with pytest.raises(WindowError, match="no window titled exactly"):
        win32_window(user32, WindowQuery("Grand Theft Auto V"))
    # Two different titles that merely contain the query: refused, never guessed.
    user32.add(5, "Grand Theft Auto V (DX11)", pid=42)
    user32.add(6, "Grand Theft Auto V (DX12)", pid=42)
    with pytest.raises(WindowError, match="will not guess"):
        win32_window(user32, WindowQuery("theft auto", "substring", "GTA5.exe"))
    # With an owner process, only its windows count, whatever their titles say.
    del user32.windows[6]
    owned = win32_window(user32, WindowQuery("Grand Theft Auto", "substring", owner=lambda: 42))
    assert owned.title == "Grand Theft Auto V (DX11)"
    with pytest.raises(WindowError, match=r"belongs to the game process 8 yet; ignored 2"):
        win32_window(user32, WindowQuery("Grand Theft Auto", "substring", owner=lambda: 8))
    with pytest.raises(WindowError, match="windows seen: 'notes on Grand Theft Auto V"):
        win32_window(user32, WindowQuery("Forza"))


# --- the capture thread ----------------------------------------------------------------------


def test_grabber_captures_the_window_pixels(painter: Painter, grabbers: list[Grabber]) -> None:
    window = painter.window("Pixel Game", 100, 50, 320, 240, RED)
    painter.fill(window, BLUE, 10, 20, 30, 40)
    painter.fill(window, GREEN, 300, 0, 20, 10)  # top-right corner
    slot: Slot[Frame] = Slot()
    grabber = Grabber(find_window(WindowQuery("Pixel Game")), 30, slot)
    grabbers.append(grabber)
    started = time.monotonic()
    grabber.start()

    frame = newest(slot)
    image = frame.image
    assert image.dtype == np.uint8 and image.shape == (240, 320, 4)
    assert frame.region == Region(100, 50, 320, 240)
    assert started <= frame.captured_at <= time.monotonic()
    assert not image.flags.writeable
    assert tuple(image[0, 0, :3]) == _bgra(RED)
    assert tuple(image[20, 10, :3]) == _bgra(BLUE)  # first pixel of the blue block
    assert tuple(image[59, 39, :3]) == _bgra(BLUE)  # last pixel of it
    assert tuple(image[60, 40, :3]) == _bgra(RED)
    assert tuple(image[19, 9, :3]) == _bgra(RED)
    assert tuple(image[0, 319, :3]) == _bgra(GREEN)
    assert tuple(image[239, 319, :3]) == _bgra(RED)
    assert grabber.error is None and not grabber.window_lost.is_set()


def started(grabber: Grabber, clock: FakeClock) -> Frame:
    """Start `grabber` on `clock`; its first frame (grabbed at once), once it waits for the
    next."""
    grabber.start()
    clock.settle(waiters=1)
    frame, seq = grabber.frames.get()
    assert frame is not None and seq == 1, grabber.error
    return frame


# The schedule on a fake clock: each grab at the moment it is due, counted exactly; the grabs
# themselves are real (mss, a real window on Xvfb).


def test_grabber_keeps_only_the_newest_frame(painter: Painter, grabbers: list[Grabber]) -> None:
    window = painter.window("Newest Game", 0, 0, 160, 120, RED)
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(find_window(WindowQuery("Newest Game")), 40, slot, clock=clock)
    grabbers.append(grabber)
    first = started(grabber, clock)
    assert first.captured_at == clock.now()

    # A consumer that looks away for half a second gets the newest frame, not the next queued one.
    clock.advance(0.51)
    later, seq = slot.get()
    assert later is not None
    assert seq - first.seq == 20  # 40 fps
    assert later.seq == seq == grabber.frames_grabbed
    assert later.captured_at == pytest.approx(first.captured_at + 0.5)

    # Each grab is a new array: a kept frame does not change under the consumer's feet.
    painter.fill(window, BLUE, 0, 0, 160, 120)
    clock.advance(0.025)
    assert tuple(slot.get()[0].image[60, 80, :3]) == _bgra(BLUE)
    assert tuple(first.image[60, 80, :3]) == _bgra(RED)
    assert not np.shares_memory(first.image, slot.get()[0].image)


def test_a_requested_frame_is_grabbed_at_once(painter: Painter, grabbers: list[Grabber]) -> None:
    """At 2 fps the next tick is up to 0.5 s away; a request grabs now (the drive loop asks
    when its model is slower than the capture), then the schedule restarts from there."""
    painter.window("Eager Game", 0, 0, 160, 120, RED)
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(find_window(WindowQuery("Eager Game")), 2, slot, clock=clock)
    grabbers.append(grabber)
    started(grabber, clock)
    for _ in range(3):
        _, seq = slot.get()
        clock.advance(0.1)
        assert slot.get()[1] == seq
        grabber.request_frame()
        clock.settle()
        fresh, new_seq = slot.get()
        assert fresh is not None and new_seq == seq + 1
        assert fresh.captured_at == clock.now()  # now, not at the tick 0.4 s away
    # The schedule restarted from the last request: its next tick is a whole period later.
    clock.advance(0.499)
    assert slot.get()[1] == new_seq
    clock.advance(0.002)
    assert slot.get()[1] == new_seq + 1
    assert grabber.requested == 3 and grabber.lagged == 0


def test_a_slow_model_gets_only_the_frames_it_asks_for(
    painter: Painter, grabbers: list[Grabber]
) -> None:
    """Between a slow model's requests the 30 fps grabs are left out (each would slow the
    prediction beside it); with no request for FOLLOW_SECONDS the fixed rate comes back."""
    from agent.capture.grabber import FOLLOW_SECONDS

    painter.window("Lazy Game", 0, 0, 160, 120, RED)
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(find_window(WindowQuery("Lazy Game")), 30, slot, clock=clock)
    grabbers.append(grabber)
    started(grabber, clock)
    for _ in range(3):
        _, seq = slot.get()
        grabber.request_frame(only_on_request=True)
        clock.settle()
        assert slot.get()[1] == seq + 1
        clock.advance(0.3)  # nine ticks at 30 fps: not one grab
        assert slot.get()[1] == seq + 1
    # Nobody asks any more: FOLLOW_SECONDS after the last request, 30 fps again.
    _, seq = slot.get()
    clock.advance(FOLLOW_SECONDS - 0.3 - 0.001)
    assert slot.get()[1] == seq
    clock.advance(0.002)
    assert slot.get()[1] == seq + 1
    clock.advance(0.31)
    assert slot.get()[1] == seq + 1 + 9
    # A model that became fast says so, and the fixed rate is back at once, not in 1 s.
    _, seq = slot.get()
    grabber.request_frame(only_on_request=True)
    clock.settle()
    assert slot.get()[1] == seq + 1
    grabber.stop_following()
    clock.advance(1 / 30 + 0.001)
    assert slot.get()[1] == seq + 2
    assert grabber.lagged == 0


def test_grabber_follows_a_moved_window(painter: Painter, grabbers: list[Grabber]) -> None:
    window = painter.window("Wandering Game", 0, 0, 200, 100, GREEN)
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(
        find_window(WindowQuery("Wandering Game")), 30, slot, region_every=0.25, clock=clock
    )
    grabbers.append(grabber)
    assert started(grabber, clock).region == Region(0, 0, 200, 100)
    window.configure(x=600, y=300)
    painter.sync()
    clock.advance(0.2)  # the region is read again every 0.25 s, not for every grab
    assert slot.get()[0].region == Region(0, 0, 200, 100)
    clock.advance(0.1)
    assert slot.get()[0].region == Region(600, 300, 200, 100)
    assert tuple(slot.get()[0].image[50, 100, :3]) == _bgra(GREEN)

    # Partly off the screen: the visible part is captured.
    window.configure(x=1820, y=1000)
    painter.sync()
    clock.advance(0.26)
    assert slot.get()[0].region == Region(1820, 1000, 100, 80)


def test_grabber_waits_for_a_lost_window_and_resumes(
    painter: Painter, grabbers: list[Grabber]
) -> None:
    window = painter.window("Phoenix Game", 50, 50, 120, 90, RED)
    target = find_window(WindowQuery("Phoenix Game"))
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(target, 30, slot, region_every=0.05, reacquire_every=0.1, clock=clock)
    grabbers.append(grabber)
    started(grabber, clock)

    painter.destroy(window)
    clock.advance(0.07)  # the region is read again within 0.05 s and a tick
    assert grabber.window_lost.is_set()
    assert grabber.state == "window lost"
    assert "was closed" in (grabber.lost_reason or "")
    _, seq = slot.get()
    clock.advance(0.35)  # three looks for it, none successful
    assert slot.get()[1] == seq, "frames were put while the window was gone"

    painter.window("Phoenix Game", 400, 300, 150, 100, BLUE)
    for _ in range(10):  # the next look, within reacquire_every, finds it
        clock.advance(0.01)
        if not grabber.window_lost.is_set():
            break
    frame, new_seq = slot.get()
    assert new_seq == seq + 1 and frame is not None
    assert clock.now() - 0.01 <= frame.captured_at <= clock.now()  # grabbed as soon as found
    assert not grabber.window_lost.is_set() and grabber.state == "capturing"
    assert frame.region == Region(400, 300, 150, 100)
    assert tuple(frame.image[50, 75, :3]) == _bgra(BLUE)
    assert target.region() == frame.region  # the same handle now targets the new window

    # Minimised (unmapped) and restored.
    second = painter.windows[-1]
    second.unmap()
    painter.sync()
    clock.advance(0.07)
    assert grabber.window_lost.is_set()
    assert "minimised or hidden" in (grabber.lost_reason or "")
    second.map()
    painter.fill(second, GREEN, 0, 0, 150, 100)
    clock.advance(0.1)
    assert not grabber.window_lost.is_set()
    assert tuple(slot.get()[0].image[50, 75, :3]) == _bgra(GREEN)
    assert grabber.error is None


def test_a_window_said_to_be_gone_is_let_go_at_once_and_looked_for_again(
    painter: Painter, grabbers: list[Grabber]
) -> None:
    """The game's supervisor saw its process end: the capture stops now, not at its next look
    at the window's region (up to 10 s away here), so the drive loop goes neutral at once."""
    painter.window("Departed Game", 0, 0, 120, 90, RED)
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(
        find_window(WindowQuery("Departed Game")), 30, slot, region_every=10.0,
        reacquire_every=0.5, clock=clock,
    )  # fmt: skip
    grabbers.append(grabber)
    started(grabber, clock)
    clock.advance(0.1)
    _, seq = slot.get()

    grabber.window_gone("the bundled game ended (killed by SIGKILL)")
    clock.settle()
    assert grabber.window_lost.is_set() and grabber.state == "window lost"
    assert grabber.lost_reason == "the bundled game ended (killed by SIGKILL)"
    clock.advance(0.49)
    assert slot.get()[1] == seq, "frames were put after the window was said to be gone"

    # Looked for again (here it is still there: a new game's window is found the same way).
    clock.advance(0.01)
    assert not grabber.window_lost.is_set() and slot.get()[1] == seq + 1
    assert grabber.error is None


def test_grabber_measures_its_rate(painter: Painter, grabbers: list[Grabber]) -> None:
    painter.window("Rate Game", 0, 0, 1280, 720, RED)
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(find_window(WindowQuery("Rate Game")), 20, slot, clock=clock)
    grabbers.append(grabber)
    started(grabber, clock)
    clock.advance(1.39)
    assert grabber.frames_grabbed == 1 + 27  # at once, then every 50 ms
    clock.advance(0.72)  # the meter's second window, a second after its first
    assert grabber.measured_fps == pytest.approx(20.0)
    grabber.stop()
    assert grabber.state == "stopped" and grabber.error is None
    assert grabber.lagged == 0 and len(grabber.grab_seconds) == grabber.frames_grabbed


def test_grabber_on_the_real_clock_holds_about_its_rate_and_stops_quickly(
    painter: Painter, grabbers: list[Grabber]
) -> None:
    """A smoke test of the real path (real waits, real time): loose bounds on purpose, the
    schedule itself is checked on the fake clock above."""
    painter.window("Real Rate Game", 0, 0, 640, 360, RED)
    slot: Slot[Frame] = Slot()
    grabber = Grabber(find_window(WindowQuery("Real Rate Game")), 20, slot)
    grabbers.append(grabber)
    grabber.start()
    assert wait_until(lambda: grabber.measured_fps > 0, timeout=10.0), grabber.error
    assert 8 <= grabber.measured_fps <= 30, grabber.measured_fps
    started_stopping = time.monotonic()
    grabber.stop()
    assert time.monotonic() - started_stopping < 0.5  # the wait between grabs ends at once
    assert grabber.state == "stopped" and grabber.error is None


def test_grabber_warns_once_about_black_frames(
    painter: Painter, grabbers: list[Grabber], caplog: pytest.LogCaptureFixture
) -> None:
    painter.window("Dark Game", 0, 0, 100, 100, (0, 0, 0))
    slot: Slot[Frame] = Slot()
    clock = FakeClock()
    grabber = Grabber(find_window(WindowQuery("Dark Game")), 30, slot, black_after=0.3, clock=clock)
    grabbers.append(grabber)
    with caplog.at_level(logging.WARNING, logger="agent.capture.grabber"):
        started(grabber, clock)
        clock.advance(0.29)
        assert "black" not in caplog.text
        clock.advance(0.05)  # black for longer than black_after
        assert "black" in caplog.text
        clock.advance(1.0)
    assert sum("black" in record.message for record in caplog.records) == 1


class _BrokenWindow:
    title = "broken"

    def region(self) -> Region:
        raise RuntimeError("a bug in a window backend")

    def exists(self) -> bool:
        return True

    def has_focus(self) -> bool:
        return False

    def reacquire(self) -> None:
        return None


def test_grabber_keeps_an_unexpected_error(x_display: str, grabbers: list[Grabber]) -> None:
    grabber = Grabber(_BrokenWindow(), 30, Slot())
    grabbers.append(grabber)
    grabber.start()
    assert wait_until(lambda: grabber.state == "failed", timeout=2.0)
    assert isinstance(grabber.error, RuntimeError)
    assert "a bug in a window backend" in str(grabber.error)


def test_grabber_reports_no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    grabber = Grabber(_BrokenWindow(), 30, Slot())
    grabber.start()
    assert wait_until(lambda: grabber.state == "failed", timeout=2.0)
    assert isinstance(grabber.error, WindowError)
    assert "DISPLAY is not set" in str(grabber.error)
    assert os.environ.get("DISPLAY") is None
