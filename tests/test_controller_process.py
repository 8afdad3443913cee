"""The controller process: keys and virtual pads held apart from the drive, released by it.

Real parts throughout: the real controller process (`python -m agent.controllers.host`), real
key events on a private Xvfb read back by the windows they reach, real kill -9. vJoy cannot
exist here, so its driver is a fake `pyvjoy` module the controller process imports, which logs
every axis it is given: the driver boundary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import ControllerConfig, KeyboardConfig
from agent.controllers import open_controller
from agent.controllers.remote import ControllerProcess, ControllerProcessError
from agent.errors import DependencyError
from agent.runtime.liveness import Failures
from agent.types import NEUTRAL, ControllerState
from tests.helpers.charles import REPO
from tests.helpers.drives import running, wait_until
from tests.helpers.xvfb import WindowProgram, keycode

FULL_THROTTLE_RIGHT = ControllerState(steering=1.0, accelerate=1.0)


@dataclass
class Target:
    """What the drive hands the controller: the game window, by handle."""

    handle: int
    title: str = "game"


@pytest.fixture
def two_windows(x_display: str) -> Iterator[tuple[WindowProgram, WindowProgram]]:
    """The game's window and another program's, each recording the key events it receives."""
    game = WindowProgram(x_display, "Charles Test Game", (0, 0, 320, 240))
    other = WindowProgram(x_display, "Another Program", (400, 0, 320, 240))
    yield game, other
    other.close()
    game.close()


def wait_for_event(
    window: WindowProgram, kind: str, code: int, timeout: float = 5.0
) -> tuple[float, str, int]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in window.events if e[1:] == (kind, code)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {kind} of {code}: {window.events}"
        time.sleep(0.01)


def test_keys_go_to_the_game_window_only_whatever_the_focus_does(
    x_display: str, two_windows: tuple[WindowProgram, WindowProgram]
) -> None:
    game, other = two_windows
    w, d = keycode(x_display, "w"), keycode(x_display, "d")
    config = ControllerConfig(backend="keyboard", hold=5.0)
    other.focus()
    controller = open_controller(config, 0, Target(game.id))
    assert isinstance(controller, ControllerProcess)
    try:
        controller.set(FULL_THROTTLE_RIGHT)
        # Another program has the focus: nothing is pressed anywhere.
        time.sleep(0.3)
        assert game.events == [] and other.events == []

        game.focus()
        wait_for_event(game, "press", w)
        wait_for_event(game, "press", d)
        # The focus moves on while both keys are down: they are released, in the game's
        # window (a key sent to "whatever has the focus now" would reach the other program).
        other.focus()
        wait_for_event(game, "release", w)
        wait_for_event(game, "release", d)
        time.sleep(0.2)
        assert other.events == [], "a key event reached another program's window"
        game.focus()  # back to the game, then neutral() lets go at once (the hold is 5 s)
        wait_until(lambda: sum(e[1:] == ("press", w) for e in game.events) == 2, 5, "W again")
        controller.neutral()
        wait_until(lambda: sum(e[1:] == ("release", w) for e in game.events) == 2, 1, "release")
    finally:
        controller.close()
    assert controller.releases == 0


def test_it_lets_go_when_the_drive_stops_sending(
    x_display: str,
    two_windows: tuple[WindowProgram, WindowProgram],
    caplog: pytest.LogCaptureFixture,
) -> None:
    game, _ = two_windows
    w = keycode(x_display, "w")
    game.focus()
    caplog.set_level(logging.INFO)
    controller = open_controller(ControllerConfig(backend="keyboard", hold=0.5), 0, Target(game.id))
    try:
        controller.set(FULL_THROTTLE_RIGHT)
        sent = time.monotonic()
        wait_for_event(game, "press", w)
        released_at, _, _ = wait_for_event(game, "release", w, timeout=3.0)
        assert 0.4 <= released_at - sent <= 0.5 + 0.5
        wait_until(lambda: controller.releases == 1, 2.0, "the release to be reported")
        # The controller process's log lines are this process's log lines.
        assert "keyboard controller: no new command for 0.5 s" in caplog.text
        controller.set(FULL_THROTTLE_RIGHT)  # a new command drives again
        wait_until(lambda: sum(e[1:] == ("press", w) for e in game.events) == 2, 2.0, "a new press")
    finally:
        controller.close()
    assert controller.error is None  # a close is not a loss


def test_the_configured_keys_are_the_ones_pressed(
    x_display: str, two_windows: tuple[WindowProgram, WindowProgram]
) -> None:
    game, _ = two_windows
    game.focus()
    keys = KeyboardConfig(accelerate="i", brake="k", left="j", right="l")
    config = ControllerConfig(backend="keyboard", hold=5.0, keyboard=keys)
    controller = open_controller(config, 0, Target(game.id))
    try:
        controller.set(ControllerState(steering=-1.0, accelerate=1.0))
        wait_for_event(game, "press", keycode(x_display, "i"))
        wait_for_event(game, "press", keycode(x_display, "j"))
    finally:
        controller.close()
    assert {code for _, _, code in game.events} == {keycode(x_display, k) for k in "ij"}


def test_a_frozen_controller_process_never_stalls_the_drive(x_display: str) -> None:
    """The controller process stops reading (SIGSTOP): the drive's commands are dropped and
    counted, never waited for, so the drive loop goes on."""
    controller = open_controller(ControllerConfig(backend="keyboard"), 0, Target(0))
    try:
        os.kill(controller.pid, signal.SIGSTOP)
        sending = threading.Thread(
            target=lambda: [controller.set(FULL_THROTTLE_RIGHT) for _ in range(20_000)],
            daemon=True,
        )
        sending.start()
        sending.join(30)
        assert not sending.is_alive(), "set() blocked on a controller process that stopped"
        assert isinstance(controller, ControllerProcess) and controller.dropped > 0
    finally:
        os.kill(controller.pid, signal.SIGCONT)
        controller.close()


DRIVE_THAT_DIES = """
import sys, time
from agent.config import ControllerConfig, KeyboardConfig
from agent.controllers import open_controller
from agent.types import ControllerState

class Target:
    handle = int(sys.argv[1])

controller = open_controller(ControllerConfig(backend="keyboard", hold=60.0), 0, Target())
controller.set(ControllerState(steering=-1.0, accelerate=1.0))
print(controller.pid, flush=True)
time.sleep(600)
"""


def test_a_drive_killed_with_9_leaves_no_key_down_and_no_controller_process(
    x_display: str, two_windows: tuple[WindowProgram, WindowProgram]
) -> None:
    game, _ = two_windows
    game.focus()
    drive = subprocess.Popen(
        [sys.executable, "-c", DRIVE_THAT_DIES, str(game.id)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert drive.stdout is not None
        child = int(drive.stdout.readline())
        w, a = keycode(x_display, "w"), keycode(x_display, "a")
        wait_for_event(game, "press", w)
        wait_for_event(game, "press", a)
        drive.kill()  # no close(), no atexit: only the pipe's end tells the controller process
        killed = time.monotonic()
        released_at, _, _ = wait_for_event(game, "release", w)
        wait_for_event(game, "release", a)
        assert released_at - killed < 1.0  # far sooner than the 60 s hold
        wait_until(lambda: not running(child), 5.0, "the controller process to exit")
    finally:
        drive.kill()
        drive.wait()


FAKE_PYVJOY = """
import json, os

class VJoyDevice:
    def __init__(self, number):
        if os.environ.get("FAKE_VJOY_MISSING"):
            raise RuntimeError("vJoy device is not enabled")
        self.number = number

    def set_axis(self, axis, value):
        with open(os.environ["FAKE_VJOY_LOG"], "a") as log:
            log.write(json.dumps([axis, value]) + "\\n")
"""


def fake_vjoy(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    """A `pyvjoy` driver module for the controller process, and the log of the axes it sets."""
    (tmp_path / "driver").mkdir(exist_ok=True)
    (tmp_path / "driver" / "pyvjoy.py").write_text(FAKE_PYVJOY)
    log = tmp_path / "axes.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "driver"), str(REPO)]),
        "FAKE_VJOY_LOG": str(log),
        **extra,
    }
    return log, env


def steering_axis(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [value for axis, value in map(json.loads, log.read_text().splitlines()) if axis == 0x30]


def test_vjoy_in_its_process_centres_when_the_drive_stops_sending(tmp_path: Path) -> None:
    log, env = fake_vjoy(tmp_path)
    controller = ControllerProcess(ControllerConfig(backend="vjoy", hold=0.4), None, env=env)
    try:
        assert steering_axis(log) == [0x4000]  # opened neutral
        controller.set(ControllerState(steering=1.0))
        sent = time.monotonic()
        wait_until(lambda: steering_axis(log)[-1:] == [0x8000], 3.0, "full right")
        wait_until(lambda: steering_axis(log)[-1:] == [0x4000], 3.0, "the centre again")
        assert time.monotonic() - sent <= 0.4 + 0.5
        wait_until(lambda: controller.releases == 1, 2.0, "the release to be reported")
    finally:
        controller.close()


FAKE_VGAMEPAD = """
import json, os

class VX360Gamepad:
    def __init__(self):
        self.report = {}

    def left_joystick(self, x_value, y_value):
        self.report["stick"] = x_value

    def right_trigger(self, value):
        self.report["accelerate"] = value

    def left_trigger(self, value):
        self.report["brake"] = value

    def update(self):
        with open(os.environ["FAKE_PAD_LOG"], "a") as log:
            log.write(json.dumps(self.report) + "\\n")
"""


def test_a_virtual_xbox_pad_in_its_process_lets_go_when_the_drive_is_killed(
    tmp_path: Path,
) -> None:
    """A ViGEm pad belongs to the process that plugged it in: here the controller process,
    which centres it when the drive's pipe closes, kill -9 included."""
    (tmp_path / "driver").mkdir()
    (tmp_path / "driver" / "vgamepad.py").write_text(FAKE_VGAMEPAD)
    log = tmp_path / "pad.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "driver"), str(REPO)]),
        "FAKE_PAD_LOG": str(log),
    }
    drive = subprocess.Popen(
        [sys.executable, "-c", PAD_DRIVE_THAT_DIES], stdout=subprocess.PIPE, text=True,
        cwd=REPO, env=env,
    )  # fmt: skip
    try:
        assert drive.stdout is not None
        child = int(drive.stdout.readline())

        def reports() -> list[dict[str, int]]:
            return [json.loads(line) for line in log.read_text().splitlines()]

        wait_until(lambda: reports()[-1] == {"stick": 32767, "accelerate": 255, "brake": 0}, 5,
                   "full right and full throttle")  # fmt: skip
        drive.kill()
        wait_until(lambda: reports()[-1] == {"stick": 0, "accelerate": 0, "brake": 0}, 2,
                   "the pad centred")  # fmt: skip
        wait_until(lambda: not running(child), 5.0, "the controller process to exit")
    finally:
        drive.kill()
        drive.wait()


PAD_DRIVE_THAT_DIES = """
import time
from agent.config import ControllerConfig, KeyboardConfig
from agent.controllers import open_controller
from agent.types import ControllerState

controller = open_controller(ControllerConfig(backend="vgamepad", hold=60.0), 0, None)
controller.set(ControllerState(steering=1.0, accelerate=1.0))
print(controller.pid, flush=True)
time.sleep(600)
"""


def test_a_missing_vjoy_driver_is_one_line_from_the_controller_process(tmp_path: Path) -> None:
    _, env = fake_vjoy(tmp_path, FAKE_VJOY_MISSING="1")
    with pytest.raises(DependencyError) as caught:
        ControllerProcess(ControllerConfig(backend="vjoy", vjoy_device=3), None, env=env)
    message = str(caught.value)
    assert "vJoy device 3 cannot be acquired" in message and "\n" not in message


def test_a_controller_process_that_dies_stops_the_drive_with_one_line(tmp_path: Path) -> None:
    _, env = fake_vjoy(tmp_path)
    controller = ControllerProcess(ControllerConfig(backend="vjoy"), None, env=env)
    try:
        controller.set(ControllerState(steering=0.5))
        os.kill(controller.pid, signal.SIGKILL)
        wait_until(lambda: controller.error is not None, 5.0, "the loss to be noticed")
        with pytest.raises(
            Exception, match=r"vjoy controller process ended unexpectedly \(exit status -9\)"
        ):
            controller.set(NEUTRAL)
    finally:
        controller.close()


SCRIPTED_HOST = """
import json, os, sys, threading, time

def say(message):
    print(json.dumps(message), flush=True)

first = sys.stdin.readline()
settings = json.loads(first)
if sys.argv[1] == "refuse":
    say({"error": "vJoy is not installed: install it from its site", "kind": "DependencyError"})
    sys.exit(0)
if sys.argv[1] == "unknown-kind":
    say({"error": "the pad broke", "kind": "ValueError"})
    sys.exit(0)
if sys.argv[1] == "silent":  # never says it is ready; ends by itself after 3 s
    time.sleep(3)
    sys.exit(0)
print("driver: warming up", flush=True)  # a library's own chatter on stdout: not JSON, skipped
say("not a message")  # a stray line is skipped, not fatal
if sys.argv[1] == "record":  # every line from the drive, as it came, to the file argv[2]
    record = open(sys.argv[2], "w")
    record.write(first)
    say({"ready": 1})
    for line in sys.stdin:
        record.write(line)
        record.flush()
        if "close" in json.loads(line):
            say({"closed": 1, "releases": 0})
            break
    sys.exit(0)
if sys.argv[1] == "deaf":  # ignores close; ends by itself after 2 s, leaving a mark
    say({"ready": 1})
    def end():
        open(sys.argv[2], "w").close()
        os._exit(0)
    threading.Timer(2.0, end).start()
    for line in sys.stdin:
        pass
    sys.exit(0)
say({"log": [20, "settings " + json.dumps(settings)]})
say({"log": [30, "driver for " + settings["backend"] + " warming up"]})
say({"releases": 3})
say({"ready": 1})
if sys.argv[1] == "stall":  # stops reading: the pipe fills
    time.sleep(60)
for line in sys.stdin:
    message = json.loads(line)
    if "set" in message:
        say({"stopped": "the driver failed", "kind": "RuntimeError"})
    if "close" in message:
        say({"closed": 1, "releases": 5})
        break
"""
"""A stand-in controller process that answers with scripted messages (sys.argv[1]: how)."""


def scripted(how: str, path: Path | None = None) -> list[str]:
    return [sys.executable, "-c", SCRIPTED_HOST, how, *([str(path)] if path else [])]


def test_what_the_controller_process_says_reaches_the_drive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its log lines at their level, its release count, and its failure: on the session's
    failures board (the drive loop stops on it) and as the error the next set() raises."""
    failures = Failures()
    with caplog.at_level(logging.DEBUG, logger="agent.controllers.remote"):
        controller = ControllerProcess(
            ControllerConfig(backend="vjoy", hold=0.7, vjoy_device=3), None,
            command=scripted("drive"), failures=failures,
        )  # fmt: skip
    try:
        [told] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("settings")]
        assert json.loads(told.removeprefix("settings ")) == {
            "backend": "vjoy", "hold": 0.7, "vjoy_device": 3,
            "keyboard": dataclasses.asdict(KeyboardConfig()),
        }  # fmt: skip
        [record] = [r for r in caplog.records if "warming up" in r.getMessage()]
        assert (record.levelno, record.getMessage()) == (
            logging.WARNING,
            "driver for vjoy warming up",
        )
        assert controller.releases == 3
        assert controller.hold == 0.7
        assert controller.error is None and failures.first() is None
        controller.set(FULL_THROTTLE_RIGHT)
        wait_until(lambda: failures.first() is not None, 5.0, "the failure to be reported")
        failure = failures.first()
        assert failure is not None and failure.part == "controller"
        assert str(failure.error) == "the driver failed"
        assert controller.error is failure.error
        with pytest.raises(ControllerProcessError, match="vjoy controller stopped: the driver"):
            controller.set(FULL_THROTTLE_RIGHT)
    finally:
        controller.close()
    assert controller.releases == 5  # the count the process closed with


@pytest.mark.parametrize(
    ("how", "kind", "text"),
    [
        ("refuse", DependencyError, "vJoy is not installed: install it from its site"),
        ("unknown-kind", ControllerProcessError, "the pad broke"),
    ],
)
def test_a_controller_process_that_cannot_start_is_its_own_one_line_error(
    how: str, kind: type[Exception], text: str
) -> None:
    with pytest.raises(kind) as refused:
        ControllerProcess(ControllerConfig(backend="vjoy"), None, command=scripted(how))
    assert type(refused.value) is kind and str(refused.value) == text


class HandleOf:
    """The game's window as the drive holds it: its handle, or an error once it is gone."""

    def __init__(self, handle: int | None) -> None:
        self.current = handle

    @property
    def handle(self) -> int:
        if self.current is None:
            raise RuntimeError("the window was destroyed")
        return self.current


def test_every_command_crosses_the_pipe_as_one_compact_json_line(tmp_path: Path) -> None:
    """What the controller process reads, byte for byte: the settings, the game's window
    (0 when it cannot be said; sent again only when it changes), each command with its frame's
    tag (0: untagged), and on close neutral first."""
    recorded = tmp_path / "lines.jsonl"
    window = HandleOf(None)
    before = set(threading.enumerate())
    controller = ControllerProcess(
        ControllerConfig(backend="keyboard", hold=0.7), window,  # type: ignore[arg-type]
        command=scripted("record", recorded),
    )  # fmt: skip
    try:
        # Its threads are daemons: a drive that ends without close() still exits (and the
        # controller process, reading the end of its pipe, lets go).
        started = set(threading.enumerate()) - before
        assert started and all(thread.daemon for thread in started), started
        assert (controller.releases, controller.dropped, controller.hold) == (0, 0, 0.7)
        # It leads a session of its own: the terminal's Ctrl-C and Ctrl-Z reach the drive only.
        assert os.getsid(controller.pid) == controller.pid != os.getsid(0)
        window.current = 77
        controller.set(ControllerState(1.0, 0.5, 0.0), tag=5)
        controller.set(ControllerState(-0.25, 0.0, 1.0))
        controller.neutral()
        window.current = 78  # the game's window was found again
        controller.set(ControllerState(0.5, 1.0, 0.0), tag=6)
    finally:
        controller.close()
    settings, *commands = recorded.read_text().splitlines()
    assert json.loads(settings) == {
        "backend": "keyboard", "hold": 0.7, "vjoy_device": 1,
        "keyboard": dataclasses.asdict(KeyboardConfig()),
    }  # fmt: skip
    assert commands == [
        '{"window":0}',
        '{"window":77}',
        '{"set":[1.0,0.5,0.0],"tag":5}',
        '{"set":[-0.25,0.0,1.0],"tag":0}',
        '{"neutral":1}',
        '{"window":78}',
        '{"set":[0.5,1.0,0.0],"tag":6}',
        '{"neutral":1}',
        '{"close":1}',
    ]
    assert controller.dropped == 0


def test_a_backend_without_a_window_is_told_there_is_none(tmp_path: Path) -> None:
    recorded = tmp_path / "lines.jsonl"
    controller = ControllerProcess(
        ControllerConfig(backend="vjoy"), None, command=scripted("record", recorded)
    )
    controller.close()
    assert recorded.read_text().splitlines()[1:] == ['{"window":0}', '{"neutral":1}', '{"close":1}']


def test_a_controller_process_that_never_says_it_is_ready_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.controllers import remote

    monkeypatch.setattr(remote, "START_TIMEOUT", 0.6)
    monkeypatch.setattr(remote, "CLOSE_TIMEOUT", 0.1)
    with pytest.raises(ControllerProcessError) as caught:
        ControllerProcess(ControllerConfig(backend="vjoy"), None, command=scripted("silent"))
    assert str(caught.value) == "the vjoy controller process did not start in 1 s"


def test_close_does_not_wait_for_a_controller_process_that_ignores_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It gets CLOSE_TIMEOUT to let go and exit, then it is stopped (long before it would
    have ended by itself)."""
    from agent.controllers import remote

    monkeypatch.setattr(remote, "CLOSE_TIMEOUT", 0.2)
    ended_by_itself = tmp_path / "ended"
    controller = ControllerProcess(
        ControllerConfig(backend="vjoy"), None, command=scripted("deaf", ended_by_itself)
    )
    controller.close()
    assert not running(controller.pid)
    assert not ended_by_itself.exists(), "close() waited for the process to end by itself"


def test_commands_a_stalled_process_has_no_room_for_are_dropped_and_counted_one_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalling = scripted("stall")
    controller = ControllerProcess(ControllerConfig(backend="vjoy"), None, command=stalling)
    try:
        assert controller.dropped == 0
        for _ in range(100_000):  # until the pipe is full
            controller.set(FULL_THROTTLE_RIGHT)
            if controller.dropped:
                break
        assert controller.dropped == 1
        for _ in range(9):
            controller.set(FULL_THROTTLE_RIGHT)
        assert controller.dropped == 10
        # Once the process is gone a command is not dropped but lost with it: the reader
        # reports the loss; writing to the closed pipe is only a debug line.
        os.kill(controller.pid, signal.SIGKILL)
        wait_until(lambda: controller.error is not None, 5.0, "the loss to be noticed")
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="agent.controllers.remote"):
            controller.neutral()
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (logging.DEBUG, "controller process pipe: [Errno 32] Broken pipe")
        ]
        assert controller.dropped == 10
    finally:
        controller.close()


def test_open_controller_runs_the_game_and_null_backends_in_this_process() -> None:
    from agent.controllers.null import NullController
    from agent.game.channel import GamepadReceiver

    receiver = GamepadReceiver(port=0, timeout=10.0)
    try:
        controller = open_controller(ControllerConfig(backend="game"), receiver.port, None)
        try:
            controller.set(FULL_THROTTLE_RIGHT)
            wait_until(lambda: receiver.poll() == FULL_THROTTLE_RIGHT, 2.0, "the pad state")
        finally:
            controller.close()
    finally:
        receiver.close()
    controller = open_controller(ControllerConfig(backend="null", hold=0.5), 0, None)
    assert isinstance(controller, NullController) and controller.hold == 0.5
    controller.close()


def test_open_controller_reports_the_loss_of_its_process_on_the_sessions_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = fake_vjoy(tmp_path)
    for name in ("PYTHONPATH", "FAKE_VJOY_LOG"):
        monkeypatch.setenv(name, env[name])
    failures = Failures()
    controller = open_controller(ControllerConfig(backend="vjoy"), 0, None, failures=failures)
    try:
        assert isinstance(controller, ControllerProcess)
        os.kill(controller.pid, signal.SIGKILL)
        wait_until(lambda: failures.first() is not None, 5.0, "the loss on the board")
        failure = failures.first()
        assert failure is not None and failure.part == "controller"
        assert str(failure.error) == (
            "the vjoy controller process ended unexpectedly (exit status -9)"
        )
    finally:
        controller.close()


def test_the_closing_message_ends_the_wait_for_close(tmp_path: Path) -> None:
    """{"closed": 1, "releases": n} is the last word of the controller process: close() stops
    waiting for it at once (it used to be taken for a plain release count, so close() waited
    for the process to end or for CLOSE_TIMEOUT)."""
    controller = ControllerProcess(
        ControllerConfig(backend="vjoy"), None, command=scripted("record", tmp_path / "lines")
    )
    try:
        assert not controller._finished.is_set()
        controller._receive({"releases": 2})
        assert controller.releases == 2 and not controller._finished.is_set()
        controller._receive({"closed": 1, "releases": 4})
        assert controller._finished.is_set() and controller.releases == 4
    finally:
        controller.close()
