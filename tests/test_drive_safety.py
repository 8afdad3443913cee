"""`charles drive` under hostile windows, stale games, signals at start-up, kill -9 and a dying X.

Each test runs the real CLI in its own process against a real X server and the real bundled
game, as a user (or a user's accident) would, and judges it from the outside: key events an X
window receives, processes left running, exit status and what was printed.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.game.channel import free_udp_port
from agent.game.launcher import (
    QUIET_MINUTES,
    BundledGame,
    remove_folders_left_behind,
    spawn_logged,
)
from agent.game.telemetry import read_last_telemetry
from tests.helpers.charles import REPO
from tests.helpers.drives import (
    EXIT_STATUS,
    Drive,
    children_of,
    drive_command,
    publish_constant_driver,
    running,
    wait_until,
    without_display,
)
from tests.helpers.xvfb import (
    WindowProgram,
    display_env,
    focus_window,
    keycode,
    program_named,
    wait_for_window,
)

pytestmark = pytest.mark.filterwarnings("ignore:builtin type [Ss]wig:DeprecationWarning")

TITLE = "Charles CarRacing"


class Editor:
    """A text editor's window whose title names the game, with the keyboard focus.

    It records every key event the X server delivers to it: keys typed into the wrong window.
    """

    def __init__(self, display: str, title: str) -> None:
        from Xlib import X, Xatom
        from Xlib.display import Display

        self.display = Display(display)
        screen = self.display.screen()
        self.window = screen.root.create_window(
            0, 0, 1400, 1000, 0, screen.root_depth,
            event_mask=X.KeyPressMask | X.KeyReleaseMask,
        )  # fmt: skip
        self.window.set_wm_name(title)
        pid_atom = self.display.intern_atom("_NET_WM_PID")
        self.window.change_property(pid_atom, Xatom.CARDINAL, 32, [os.getpid()])
        self.window.map()
        self.display.sync()
        self._X = X

    def focus(self) -> None:
        self.window.set_input_focus(self._X.RevertToParent, self._X.CurrentTime)
        self.display.sync()

    def key_events(self, seconds: float) -> int:
        """Key events that arrive within `seconds`."""
        count = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.display], [], [], min(left, 0.05))
            while self.display.pending_events():
                event = self.display.next_event()
                count += event.type in (self._X.KeyPress, self._X.KeyRelease)
        return count

    def close(self) -> None:
        self.window.destroy()
        self.display.close()


@pytest.fixture
def editor(x_display: str) -> Iterator[Editor]:
    window = Editor(x_display, "notes on charles carracing - Text Editor")
    yield window
    window.close()


def test_a_lookalike_window_never_gets_a_key(editor: Editor, tmp_path: Path) -> None:
    """The editor is not the game: Charles starts its own game and types only into that."""
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=1.0, steering=0.5)
    editor.focus()
    command = drive_command(store, free_udp_port(), "--backend", "keyboard", "--json")
    drive = Drive(command, tmp_path)
    try:
        drive.wait_for_log("driving 'Charles CarRacing'")
        # The editor has the focus: the keyboard backend must press nothing at all.
        assert editor.key_events(2.0) == 0, "keys were typed into the text editor"
        # The game gets the focus: now it is driven by keys.
        focus_window(os.environ["DISPLAY"], wait_for_window(os.environ["DISPLAY"], TITLE).id)
        time.sleep(2.0)
        assert editor.key_events(0.1) == 0
        drive.signal("SIGTERM")
    finally:
        status = drive.finish()
    assert status == EXIT_STATUS["SIGTERM"], drive.stderr[-3000:]
    summary = drive.summary()
    assert summary["window"] == TITLE
    assert summary["game"]["source"] == "keyboard", summary["game"]


def start_game(port: int, cwd: Path, *extra: str) -> subprocess.Popen[bytes]:
    telemetry = cwd / f"telemetry-{port}.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.game", "--size", "640x360", "--port", str(port),
         "--telemetry", str(telemetry), *extra],
        cwd=REPO, env=display_env(os.environ["DISPLAY"]), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: read_last_telemetry(telemetry) is not None, 60, "the game to start")
    return process


def test_a_game_another_drive_started_is_never_adopted(x_display: str, tmp_path: Path) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    port = free_udp_port()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    game = start_game(port, tmp_path, "--owner-pid", str(owner.pid))
    try:
        drive = Drive(drive_command(store, port, "--seconds", "5"), tmp_path)
        assert drive.finish(60) == 1
        [line] = drive.error_lines()
        assert f"belongs to another charles drive (pid {owner.pid})" in line
        assert "Traceback" not in drive.stderr

        owner.kill()
        owner.wait()  # the game's owner is gone: the game is a leftover
        drive = Drive(drive_command(store, port, "--seconds", "5"), tmp_path)
        assert drive.finish(60) == 1
        [line] = drive.error_lines()
        assert "left over from an earlier charles drive" in line and f"kill {game.pid}" in line
        assert "driving" not in drive.stderr
    finally:
        owner.kill()
        game.kill()
        game.wait()


def test_kill_9_leaves_no_game_and_no_xvfb_behind(tmp_path: Path) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**without_display(), "TMPDIR": str(temporary)}
    drive = Drive(drive_command(store, free_udp_port(), "--json"), tmp_path, env)
    drive.wait_for_log("driving 'Charles CarRacing'")
    helpers = children_of(drive.process.pid)
    names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in helpers}
    assert any(b"Xvfb" in name for name in names.values()), names
    assert any(b"agent.game" in name for name in names.values()), names
    drive.process.kill()
    drive.finish()
    wait_until(
        lambda: not any(running(pid) for pid in helpers), 15, f"{names} to exit after kill -9"
    )
    # The game's folder (log, telemetry) outlives a drive killed -9; a later launch removes it
    # once nothing has been written in it for QUIET_MINUTES.
    left = list(temporary.glob(f"charles-game-{drive.process.pid}-*"))
    assert len(left) == 1 and (left[0] / "game.log").exists(), left
    assert remove_folders_left_behind(temporary) == []  # written just now
    age(left[0], QUIET_MINUTES + 1)
    assert remove_folders_left_behind(temporary) == left
    assert not left[0].exists()


def age(folder: Path, minutes: float) -> None:
    """Set the modification times of `folder` and what it holds `minutes` back."""
    then = time.time() - 60 * minutes
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (then, then), follow_symlinks=False)


def test_only_folders_of_dead_drives_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep me")
    folders = {
        "dead drive": tmp_path / f"charles-game-{dead.pid}-abc",
        "dead drive, written lately": tmp_path / f"charles-game-{dead.pid}-new",
        "living process": tmp_path / f"charles-game-{os.getppid()}-abc",
        "this process": tmp_path / f"charles-game-{os.getpid()}-abc",
        "not a pid": tmp_path / "charles-game-x1-abc",
    }
    for folder in folders.values():
        folder.mkdir()
        (folder / "game.log").write_text("log")
        (folder / "telemetry.jsonl").write_text("{}\n")
    (folders["dead drive"] / "link").symlink_to(victim)  # inside: never followed
    for folder in folders.values():
        age(folder, QUIET_MINUTES + 1)
    # A game still writing (a drive whose pid this process cannot see): not left behind.
    (folders["dead drive, written lately"] / "telemetry.jsonl").write_text("{}\n{}\n")
    link = tmp_path / f"charles-game-{dead.pid}-link"
    link.symlink_to(victim)  # a link named like a dead drive's folder: not a folder of ours
    assert remove_folders_left_behind(tmp_path) == [folders["dead drive"]]
    assert [name for name, folder in folders.items() if not folder.exists()] == ["dead drive"]
    assert link.is_symlink() and (victim / "keep.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("signal_name", "wait_for", "extra"),
    [
        # The bundled game takes seconds to open its window: the signal lands while waiting.
        ("SIGTERM", "waiting for the bundled game's window", ()),
        # model_0005 takes seconds to build: the signal lands while loading it.
        (
            "SIGINT",
            "loading a fresh model_0005",
            ("--model", "model_0005_inceptionresnetv2", "--checkpoint", "none",
             "--backend", "null", "--set", "game.region=[0, 0, 640, 360]"),
        ),
    ],
)  # fmt: skip
def test_a_stop_signal_during_start_up_ends_it_before_any_input(
    tmp_path: Path, signal_name: str, wait_for: str, extra: tuple[str, ...]
) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    command = [*drive_command(store, free_udp_port()), *extra]
    drive = Drive(command, tmp_path, without_display())
    drive.wait_for_log(wait_for)
    helpers = children_of(drive.process.pid)
    drive.signal(signal_name)
    status = drive.finish(timeout=20)
    assert status == EXIT_STATUS[signal_name], drive.stderr[-3000:]
    assert f"charles: stopped by {signal_name} while starting" in drive.stderr
    assert "Traceback" not in drive.stderr
    assert "driving '" not in drive.stderr, "the loop started after the stop signal"
    wait_until(lambda: not any(running(pid) for pid in helpers), 15, "the helpers to exit")


@pytest.fixture
def killable_x_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """An X server this test may kill (not the module's shared one), and its DISPLAY."""
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x720x24", "-nolisten", "tcp",
         "-noreset"],
        pass_fds=(write_end,), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 10)
        number = os.read(read_end, 32).decode().strip() if ready else ""
        assert number, "Xvfb did not start"
        yield server, f":{number}"
    finally:
        server.kill()
        server.wait()
        # Closed only now: Xvfb writes to this pipe again later, and a closed pipe kills it.
        os.close(read_end)


def test_the_x_server_dying_mid_drive_is_one_clear_line(
    killable_x_server: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    server, display = killable_x_server
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    drive = Drive(drive_command(store, free_udp_port(), "--json"), tmp_path, display_env(display))
    drive.wait_for_log("driving 'Charles CarRacing'")
    helpers = children_of(drive.process.pid)
    time.sleep(1.0)
    server.kill()
    status = drive.finish(timeout=30)
    assert status == 1, drive.stderr[-3000:]
    assert "Traceback" not in drive.stderr, drive.stderr[-5000:]
    [line] = drive.error_lines()
    assert f"lost the X display '{display}'" in line
    wait_until(lambda: not any(running(pid) for pid in helpers), 15, "the game to exit")


def test_the_games_output_goes_to_a_file_and_never_blocks_it(tmp_path: Path) -> None:
    """A pipe nobody reads fills at 64 KiB and would freeze the game on its next write."""
    chatty = (
        "import sys\n"
        "for n in range(20000):\n"
        "    print(f'log line {n} ' + 'x' * 60, file=sys.stderr)\n"
        "print('the last words', file=sys.stderr)\n"
    )
    log_path = tmp_path / "game.log"
    process = spawn_logged([sys.executable, "-c", chatty], log_path)
    try:
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert log_path.stat().st_size > 1_000_000
    game = BundledGame(port=0, process=process, log_path=log_path)
    assert game.exited() and game.last_words() == "the last words"


def test_keyboard_with_a_region_needs_the_games_window_for_focus(
    x_display: str, tmp_path: Path, run_charles
) -> None:
    result = run_charles(
        "drive", "--config", str(REPO / "config.toml"), "--backend", "keyboard",
        "--set", "game.region=[0, 0, 320, 240]",
        "--set", "game.title='No Such Game'", "--seconds", "1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("charles: error:")]
    assert "with game.region, the keyboard backend still needs the game's window" in line
    assert "'No Such Game'" in line


# --- keys only to the game, under every title rule, and let go by a frozen Charles -----------


def wait_for_key(window: WindowProgram, kind: str, code: int, timeout: float = 60.0) -> float:
    """When `window` first received a `kind` ("press"/"release") of `code`."""
    wait_until(lambda: any(e[1:] == (kind, code) for e in window.events), timeout, f"{kind} {code}")
    return next(at for at, *event in window.events if tuple(event) == (kind, code))


def test_a_frozen_charles_lets_go_of_every_key_within_the_hold(
    x_display: str, tmp_path: Path
) -> None:
    """SIGSTOP freezes the whole drive process (as a debugger, swapping or a native call holding
    the GIL would): the keys it held are released `controller.hold` seconds after its last
    command, by the controller process, which the stop does not reach."""
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=1.0, steering=1.0)  # holds W and D down
    w, d = keycode(x_display, "w"), keycode(x_display, "d")
    with WindowProgram(x_display, "Charles Test Game", (0, 0, 640, 360)) as game:
        game.focus()
        command = drive_command(
            store, free_udp_port(), "--backend", "keyboard", "--json",
            "--set", "game.title='Charles Test Game'", "--set", "unstuck.enabled=false",
        )  # fmt: skip
        drive = Drive(command, tmp_path)
        try:
            drive.wait_for_log("driving 'Charles Test Game'")
            wait_for_key(game, "press", w)
            wait_for_key(game, "press", d)
            drive.signal("SIGSTOP")
            stopped = time.monotonic()
            released = max(
                wait_for_key(game, "release", w, 10), wait_for_key(game, "release", d, 10)
            )
            assert released - stopped <= 1.0 + 0.5, released - stopped
            drive.signal("SIGCONT")  # it drives on: the keys go down again
            wait_until(lambda: sum(e[1:] == ("press", w) for e in game.events) >= 2, 10, "W again")
            drive.signal("SIGTERM")
        finally:
            drive.signal("SIGCONT")
            status = drive.finish()
    assert status == EXIT_STATUS["SIGTERM"], drive.stderr[-3000:]
    assert drive.summary()["deadman_releases"] >= 1


def test_a_window_whose_title_merely_contains_the_games_never_gets_a_key(
    x_display: str, tmp_path: Path
) -> None:
    """The default rule is the exact title; a substring rule needs the game's program, and
    holds after the game closes too: Charles never re-acquires the browser tab."""
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=1.0, steering=1.0)
    title = "Grand Theft Auto V"
    browser_program = program_named(tmp_path, "firefox-esr")
    with WindowProgram(
        x_display, f"{title} cheats - Mozilla Firefox", (0, 0, 1000, 700),
        executable=browser_program,
    ) as browser:  # fmt: skip
        browser.focus()
        command = drive_command(
            store, free_udp_port(), "--backend", "keyboard", "--seconds", "3",
            "--set", f"game.title='{title}'",
        )  # fmt: skip
        drive = Drive(command, tmp_path)
        assert drive.finish(60) == 1, drive.stderr[-3000:]
        [line] = drive.error_lines()
        assert f"no window titled exactly '{title}'" in line
        assert browser.events == [], "keys were typed into the browser"

        # The game's own program, by name: its window is driven, the browser never.
        loose = [
            "--set", "game.match=substring", "--set", "game.process=GTA5.exe",
            "--set", f"game.title='{title}'", "--set", "unstuck.enabled=false",
        ]  # fmt: skip
        game = WindowProgram(
            x_display, title, (100, 100, 640, 360), executable=program_named(tmp_path, "GTA5.exe")
        )
        game.focus()
        command = drive_command(store, free_udp_port(), "--backend", "keyboard", "--json", *loose)
        drive = Drive(command, tmp_path)
        try:
            drive.wait_for_log(f"driving '{title}'")
            wait_for_key(game, "press", keycode(x_display, "w"))
            game.close()
            drive.wait_for_log("waiting for it to come back")
            browser.focus()
            time.sleep(3.0)  # the drive looks for the game again and again meanwhile
            assert "found the game window" not in drive.stderr
            drive.signal("SIGTERM")
        finally:
            game.close()
            status = drive.finish()
        assert status == EXIT_STATUS["SIGTERM"], drive.stderr[-3000:]
        assert browser.events == [], "keys were typed into the browser"


def test_with_a_region_the_focus_window_follows_the_same_rules(
    editor: Editor, tmp_path: Path, run_charles
) -> None:
    """game.region with the keyboard: the default title names the bundled game, so only its
    process's window could say "the game has focus"; an editor naming it never does."""
    editor.focus()
    result = run_charles(
        "drive", "--config", str(REPO / "config.toml"), "--backend", "keyboard",
        "--set", "game.region=[0, 0, 320, 240]", "--set", f"game.channel_port={free_udp_port()}",
        "--seconds", "2", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("charles: error:")]
    assert "the keyboard backend still needs the game's window" in line
    assert "the bundled game is not running" in line
    assert editor.key_events(0.5) == 0


def test_a_lookalike_claiming_the_games_pid_never_gets_a_key(
    x_display: str, tmp_path: Path
) -> None:
    """A larger, focused window titled like the bundled game, whose _NET_WM_PID names the
    game's process: Charles asks the X server who made each window, and drives the game."""
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=1.0, steering=0.0)
    port = free_udp_port()
    game = start_game(port, tmp_path)
    try:
        with WindowProgram(x_display, TITLE, (0, 0, 1400, 1000), claimed_pid=game.pid) as impostor:
            impostor.focus()
            command = drive_command(store, port, "--backend", "keyboard", "--json")
            drive = Drive(command, tmp_path)
            try:
                drive.wait_for_log(f"driving '{TITLE}'")
                time.sleep(2.0)
                assert impostor.events == [], "keys were typed into the lookalike"
                drive.signal("SIGTERM")
            finally:
                status = drive.finish()
        assert status == EXIT_STATUS["SIGTERM"], drive.stderr[-3000:]
        assert drive.summary()["window"] == TITLE
    finally:
        game.kill()
        game.wait()
