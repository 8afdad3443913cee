"""The controller process's own code, run in this process: its message loop, its outbox and
the key sender it uses on X11. (tests/test_controller_process.py runs the real process.)

vJoy is faked at the driver boundary (a `pyvjoy` module); the key sender sends real X events
to real windows on a private Xvfb.
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from agent.controllers.deadman import DEFAULT_HOLD
from agent.controllers.host import (
    WATCH_PERIOD,
    FocusTarget,
    Outbox,
    apply,
    build_backend,
    main,
    serve,
    watch,
)
from agent.controllers.xkeys import WindowKeySender, keysym_of
from agent.errors import ConfigError
from agent.types import NEUTRAL, ControllerState
from tests.helpers.clock import FakeClock
from tests.helpers.waiting import wait_until
from tests.helpers.xvfb import keycode

X_AXIS = 0x30


class Collected:
    """A stream the outbox writes to: the messages, parsed."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._written = threading.Condition()

    def write(self, data: bytes) -> int:
        with self._written:
            self.messages.append(json.loads(data))
            self._written.notify_all()
        return len(data)

    def flush(self) -> None:
        pass

    def wait_for(self, key: str, timeout: float = 5.0) -> dict[str, Any]:
        """The newest message with `key`, as soon as there is one."""
        with self._written:
            found = self._written.wait_for(
                lambda: [m for m in self.messages if key in m], timeout=timeout
            )
            assert found, f"no {key!r} in {self.messages}"
            return found[-1]


class FakeVJoy:
    def __init__(self, number: int) -> None:
        self.number = number
        self.calls: list[tuple[int, int]] = []

    def set_axis(self, axis: int, value: int) -> None:
        self.calls.append((axis, value))

    def steering(self) -> int:
        return [value for axis, value in self.calls if axis == X_AXIS][-1]


class Served:
    """`serve` on a thread, its stdin a real pipe, its outbox collected."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        self._stdin = os.fdopen(read_end, "rb")
        self.out = Collected()
        self.thread = threading.Thread(
            target=serve, args=(self._stdin, Outbox(self.out)), daemon=True
        )
        self.thread.start()

    def send(self, message: dict[str, Any]) -> None:
        os.write(self._write_end, (json.dumps(message) + "\n").encode())

    def hang_up(self) -> None:
        """The drive's end closes: what kill -9 of the drive does."""
        os.close(self._write_end)
        self.thread.join(5)
        assert not self.thread.is_alive()
        self._stdin.close()


@pytest.fixture
def vjoy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeVJoy]]:
    devices: list[FakeVJoy] = []

    def device(number: int) -> FakeVJoy:
        devices.append(FakeVJoy(number))
        return devices[-1]

    monkeypatch.setitem(sys.modules, "pyvjoy", types.SimpleNamespace(VJoyDevice=device))
    yield devices


SETTINGS = {"backend": "vjoy", "hold": 0.3, "vjoy_device": 2, "keyboard": {}}


def test_it_drives_lets_go_by_itself_reports_and_closes_on_request(vjoy: list[FakeVJoy]) -> None:
    served = Served()
    served.send(SETTINGS)
    served.out.wait_for("ready")
    [device] = vjoy
    assert device.number == 2 and device.steering() == 0x4000  # opened neutral
    served.send({"set": [1.0, 0.0, 0.0], "tag": 7})
    assert wait_until(lambda: device.steering() == 0x8000), device.calls
    # No newer command: the dead-man centres it after `hold`, and the drive is told.
    assert served.out.wait_for("releases")["releases"] == 1
    assert device.steering() == 0x4000
    served.send({"set": [-1.0, 0.0, 0.0]})
    served.send({"neutral": 1})
    served.send({"close": 1})
    served.thread.join(5)
    assert not served.thread.is_alive()
    assert served.out.messages[-1] == {"closed": 1, "releases": 1}
    assert device.steering() == 0x4000
    served.hang_up()


def test_the_drive_hanging_up_centres_everything(vjoy: list[FakeVJoy]) -> None:
    served = Served()
    served.send({**SETTINGS, "hold": 60.0})
    served.out.wait_for("ready")
    served.send({"set": [-1.0, 1.0, 0.0]})
    assert wait_until(lambda: vjoy[0].steering() == 0x1), vjoy[0].calls
    served.hang_up()
    assert vjoy[0].steering() == 0x4000
    assert served.out.messages[-1] == {"closed": 1, "releases": 0}


def test_a_driver_that_cannot_open_is_one_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyvjoy", None)
    served = Served()
    served.send(SETTINGS)
    error = served.out.wait_for("error")
    assert error["kind"] == "DependencyError" and "pip install pyvjoy" in error["error"]
    served.thread.join(5)
    assert not served.thread.is_alive() and "ready" not in str(served.out.messages)
    served.hang_up()


def test_only_backends_that_hold_input_in_the_os_are_served() -> None:
    with pytest.raises(ValueError, match="not 'game'"):  # a bug in the drive, not a user's
        build_backend({**SETTINGS, "backend": "game"})


def test_the_settings_build_the_backend_the_drive_asked_for(vjoy: list[FakeVJoy]) -> None:
    controller, focus = build_backend(SETTINGS)
    try:
        assert (controller.name, controller.hold, focus) == ("vjoy", 0.3, None)
        assert [device.number for device in vjoy] == [2]
    finally:
        controller.close()
    # What the drive leaves out takes the defaults: hold 1 s, vJoy device 1.
    controller, focus = build_backend({"backend": "vjoy"})
    try:
        assert (controller.hold, focus) == (DEFAULT_HOLD, None)
        assert [device.number for device in vjoy] == [2, 1]
    finally:
        controller.close()
    with pytest.raises(ValueError, match="not None"):
        build_backend({})


class Recorder:
    """A controller and a focus target that write down what is done to them, in order."""

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.handle = 0
        self.releases = 0
        self.error: BaseException | None = None

    def set(self, state: ControllerState, tag: int = 0) -> None:
        self.done.append(("set", state, tag))

    def neutral(self) -> None:
        self.done.append("neutral")

    def aim(self, handle: int) -> None:
        self.done.append(("aim", handle))
        self.handle = handle


def test_the_keyboard_is_served_with_its_keys_and_presses_only_in_the_named_window(
    x_display: str,
) -> None:
    game, other = EventWindow(x_display), EventWindow(x_display)
    served = Served()
    try:
        keys = {"accelerate": "i", "brake": "k", "left": "j", "right": "l", "pulse_period": 0.1}
        served.send({"backend": "keyboard", "hold": 60.0, "vjoy_device": 1, "keyboard": keys})
        served.out.wait_for("ready")
        served.send({"set": [1.0, 1.0, 0.0], "tag": 0})
        assert game.events(0.3) == [] and other.events(0.05) == []  # no window named yet
        game.window.set_input_focus(0, 0)  # X.RevertToNone, CurrentTime
        game.connection.sync()
        served.send({"window": game.id})
        served.send({"set": [1.0, 1.0, 0.0], "tag": 0})
        i, l_key = (keycode(x_display, name) for name in "il")
        assert sorted(game.events(0.3)) == [("press", i), ("press", l_key)]
        # The focus moves to another window while both keys are down: they are let go, in the
        # game's window (an event sent to whatever has the focus would reach the other one).
        other.window.set_input_focus(0, 0)
        other.connection.sync()
        assert sorted(game.events(0.3)) == [("release", i), ("release", l_key)]
        assert other.events(0.05) == []
    finally:
        served.hang_up()
        game.close()
        other.close()


def test_a_new_game_window_is_aimed_at_only_after_letting_go() -> None:
    recorder = Recorder()
    assert apply(recorder, recorder, {"set": [0.5, 1, 0.25], "tag": 3})  # type: ignore[arg-type]
    assert apply(recorder, recorder, {"set": [-1, 0, 1]})  # type: ignore[arg-type]  # untagged
    assert apply(recorder, recorder, {"window": 42})  # type: ignore[arg-type]
    assert apply(recorder, recorder, {"window": 42})  # type: ignore[arg-type]  # the same
    assert apply(recorder, None, {"window": 43})  # type: ignore[arg-type]  # vJoy: no window
    assert apply(recorder, recorder, {"neutral": 1})  # type: ignore[arg-type]
    assert not apply(recorder, recorder, {"close": 1})  # type: ignore[arg-type]
    assert recorder.done == [
        ("set", ControllerState(0.5, 1.0, 0.25), 3), ("set", ControllerState(-1.0, 0.0, 1.0), 0),
        "neutral", ("aim", 42), "neutral",
    ]  # fmt: skip


def test_the_watcher_reports_releases_and_a_stopped_backend_once() -> None:
    recorder, out, done, clock = Recorder(), Collected(), threading.Event(), FakeClock()
    outbox = Outbox(out)
    thread = threading.Thread(target=watch, args=(recorder, outbox, done, clock), daemon=True)
    thread.start()
    clock.settle(waiters=1)
    recorder.releases = 2
    clock.advance(WATCH_PERIOD)
    assert out.wait_for("releases") == {"releases": 2}
    recorder.error = RuntimeError("the X server went away")
    clock.advance(WATCH_PERIOD)
    assert out.wait_for("stopped") == {"stopped": "the X server went away", "kind": "RuntimeError"}
    clock.advance(10 * WATCH_PERIOD)  # ten more looks: nothing new to tell
    done.set()
    thread.join(5)
    outbox.close()  # sends everything queued
    assert sum("stopped" in m for m in out.messages) == 1
    assert sum("releases" in m for m in out.messages) == 1


def test_the_outbox_never_blocks_on_a_drive_that_stopped_reading() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, True)
    outbox = Outbox(os.fdopen(write_end, "wb"), size=4)
    # Nobody reads the pipe: its 64 KiB fill, then the writer thread blocks on it for good.
    big = {"log": [30, "x" * 60_000]}
    for _ in range(50):
        outbox.post(big)  # returns at once, whatever the pipe does
    assert outbox.dropped >= 40
    os.close(read_end)  # the writer's next write fails: it ends
    closing = threading.Thread(target=outbox.close, kwargs={"timeout": 0.2}, daemon=True)
    closing.start()
    closing.join(5)
    assert not closing.is_alive(), "close() hung on the outbox of a drive that is gone"


def test_keysyms_of_letters_names_and_other_characters() -> None:
    from Xlib import XK

    def key(char: str | None = None, vk: int | None = None) -> Any:
        return types.SimpleNamespace(char=char, vk=vk)

    assert keysym_of(key("w")) == XK.string_to_keysym("w")
    assert keysym_of(key(",")) == ord(",")  # no name string_to_keysym knows: Latin-1 code
    assert keysym_of(key("ß")) == 0xDF
    assert keysym_of(key("€")) == 0x1000000 + ord("€")
    assert keysym_of(key(vk=0xFF52)) == 0xFF52  # Up, as pynput's X11 keys carry it
    assert keysym_of(types.SimpleNamespace(value=key(vk=0xFFBF))) == 0xFFBF  # a Key member
    # The first character past Latin-1 is a Unicode keysym already.
    assert keysym_of(key("\u0100")) == 0x1000100
    for nothing in (key(""), key(None), key("ab")):
        with pytest.raises(ConfigError) as caught:
            keysym_of(nothing)
        assert str(caught.value) == (
            f"keyboard key {nothing!r} has no X keysym; use a letter or a key name"
        )


class EventWindow:
    """A window of this test's own X connection that records the key events it receives."""

    def __init__(self, display: str) -> None:
        from Xlib import X
        from Xlib.display import Display

        self._X = X
        self.connection = Display(display)
        screen = self.connection.screen()
        self.window = screen.root.create_window(
            0, 0, 100, 100, 0, screen.root_depth, event_mask=X.KeyPressMask | X.KeyReleaseMask
        )
        self.window.map()
        self.connection.sync()
        self.id = self.window.id
        self.received: list[Any] = []
        """Every key event `events` found, whole (python-xlib's event objects)."""

    def events(self, seconds: float = 0.2) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.connection], [], [], left)
            while self.connection.pending_events():
                event = self.connection.next_event()
                if event.type in (self._X.KeyPress, self._X.KeyRelease):
                    self.received.append(event)
                    found.append(("press" if event.type == self._X.KeyPress else "release",
                                  event.detail))  # fmt: skip
        return found

    def close(self) -> None:
        self.connection.close()


def test_the_sender_reaches_the_window_it_aims_at_and_no_other(
    x_display: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from pynput.keyboard import Key, KeyCode

    game, other = EventWindow(x_display), EventWindow(x_display)
    sender = WindowKeySender(game.id)
    try:
        w, up = sender.keycode(KeyCode.from_char("w")), sender.keycode(Key.up)
        assert w != up and w > 0
        sender.press(KeyCode.from_char("w"))
        sender.press(Key.up)
        sender.release(KeyCode.from_char("w"))
        assert game.events() == [("press", w), ("press", up), ("release", w)]
        assert other.events(0.05) == []
        sender.aim(0)  # no window: nothing goes anywhere
        sender.release(Key.up)
        sender.aim(other.id)
        sender.release(Key.up)
        assert game.events(0.1) == [] and other.events() == [("release", up)]
        game.window.destroy()
        game.connection.sync()
        sender.aim(game.id)  # the game closed: sending to it is quietly nothing
        sender.press(Key.up)
        with pytest.raises(ConfigError) as missing:
            sender.keycode(KeyCode.from_char("\u4e2d"))
        assert str(missing.value) == (
            "keyboard key '\u4e2d' is not on this keyboard layout; pick another key in "
            "[controller.keyboard]"
        )
    finally:
        sender.close()
        game.close()
        other.close()
    assert "BadWindow" not in capfd.readouterr().err


def test_a_focus_target_has_no_focus_before_the_drive_names_a_window(x_display: str) -> None:
    target = FocusTarget()
    window, next_window = EventWindow(x_display), EventWindow(x_display)
    try:
        assert not target.has_focus() and target.handle == 0
        window.window.set_input_focus(0, 0)  # X.RevertToNone, CurrentTime
        window.connection.sync()
        target.aim(window.id)
        assert target.handle == window.id and target.has_focus()
        # The game's window was re-acquired as another: its focus is the one that counts now.
        target.aim(next_window.id)
        assert target.handle == next_window.id and not target.has_focus()
        next_window.window.set_input_focus(0, 0)
        next_window.connection.sync()
        assert target.has_focus()
        target.aim(0)
        assert not target.has_focus()
    finally:
        window.close()
        next_window.close()
    assert ControllerState() == NEUTRAL


def test_the_game_gets_plain_key_events_that_no_other_client_hears(x_display: str) -> None:
    """A key event as the game reads it: its window, no modifier held (a configured W is not
    Shift+W), the pointer fields zero; and it goes to the game's own client only, even when
    another client listens for key events on the game's window."""
    from pynput.keyboard import KeyCode
    from Xlib import X
    from Xlib.display import Display

    game = EventWindow(x_display)
    snoop = Display(x_display)
    snooped = snoop.create_resource_object("window", game.id)
    snooped.change_attributes(event_mask=X.KeyPressMask | X.KeyReleaseMask)
    snoop.sync()
    sender = WindowKeySender(game.id)
    try:
        w = sender.keycode(KeyCode.from_char("w"))
        sender.press(KeyCode.from_char("w"))
        sender.release(KeyCode.from_char("w"))
        assert game.events() == [("press", w), ("release", w)]
        root = game.connection.screen().root.id
        for event in game.received:
            assert (event.window.id, event.root.id, event.child) == (game.id, root, X.NONE)
            assert (event.state, event.same_screen, event.detail) == (0, 1, w)
            assert (event.root_x, event.root_y, event.event_x, event.event_y) == (0, 0, 0, 0)
        snoop.sync()
        assert snoop.pending_events() == 0, "another client heard the game's keys"
    finally:
        sender.close()
        snoop.close()
        game.close()


def test_a_sender_aimed_at_no_window_sends_nothing_anywhere(x_display: str) -> None:
    """Not to the window that has the focus, nor to the one under the pointer (X11 has names
    for both among its window numbers)."""
    from pynput.keyboard import KeyCode

    game = EventWindow(x_display)
    game.window.set_input_focus(0, 0)  # X.RevertToNone, CurrentTime
    game.connection.screen().root.warp_pointer(50, 50)  # over the game's window
    game.connection.sync()
    sender = WindowKeySender()
    try:
        sender.press(KeyCode.from_char("w"))
        assert game.events(0.1) == []
        sender.aim(game.id)
        sender.release(KeyCode.from_char("w"))
        assert game.events() == [("release", sender.keycode(KeyCode.from_char("w")))]
        sender.aim(0)
        sender.press(KeyCode.from_char("w"))
        assert game.events(0.1) == []
    finally:
        sender.close()
        game.close()


# --- the process's own entry point, on this (main) thread -----------------------------------

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name)
)


@pytest.fixture
def process_state() -> Iterator[None]:
    """What main() and serve() on the main thread change for the whole process: the stop
    signals' handlers and the root logger (they are the controller process's to change),
    put back for the other tests."""
    handlers = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)
    for handler in root.handlers:
        if handler not in root_handlers:
            handler.close()
    root.handlers[:] = root_handlers
    root.setLevel(root_level)


def lines(*messages: dict[str, Any]) -> bytes:
    return b"".join((json.dumps(message) + "\n").encode() for message in messages)


def test_main_serves_its_pipes_and_sends_its_log_lines_to_the_drive(
    vjoy: list[FakeVJoy], process_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole conversation, as the drive reads it from stdout; the exit status is 0; and
    once it lets go, no stop signal can interrupt the release."""
    out = Collected()
    stdin = lines({**SETTINGS, "hold": 60.0}, {"set": [1.0, 0.0, 0.0], "tag": 4}, {"close": 1})
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin)))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=out))
    assert main() == 0
    assert out.messages == [
        {"log": [logging.INFO, "vJoy device 2 acquired"]},
        {"ready": 1},
        {"closed": 1, "releases": 0},
    ]
    assert [value for axis, value in vjoy[0].calls if axis == X_AXIS] == [0x4000, 0x8000, 0x4000]
    assert all(signal.getsignal(number) == signal.SIG_IGN for number in STOP_SIGNALS)


class SignalledPipe:
    """The drive's pipe: the settings, one command, then SIGTERM arrives while the next line
    is awaited. Notes what is running in this process at that moment."""

    def __init__(self, settings: dict[str, Any], command: dict[str, Any]) -> None:
        self._settings, self._command = settings, command
        self.threads_before = set(threading.enumerate())
        self.started: set[threading.Thread] = set()

    def readline(self) -> bytes:
        return lines(self._settings)

    def __iter__(self) -> Iterator[bytes]:
        yield lines(self._command)
        self.started = set(threading.enumerate()) - self.threads_before
        signal.raise_signal(signal.SIGTERM)
        yield lines({"set": [-1.0, 0.0, 0.0]})  # never read: the signal stops the process first


def test_a_stop_signal_lets_go_of_everything_and_ends_the_process_cleanly(
    vjoy: list[FakeVJoy], process_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Collected()
    pipe = SignalledPipe({**SETTINGS, "hold": 60.0}, {"set": [1.0, 1.0, 0.0]})
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=pipe))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=out))
    assert main() == 0
    assert [value for axis, value in vjoy[0].calls if axis == X_AXIS] == [0x4000, 0x8000, 0x4000]
    assert out.messages[-1] == {"closed": 1, "releases": 0}
    # The threads it ran meanwhile (its outbox's writer, the watcher, the pad's dead-man) are
    # daemons: one stuck on a drive that stopped reading cannot keep the process alive.
    assert pipe.started and all(thread.daemon for thread in pipe.started), pipe.started


def test_serve_ends_quietly_when_the_drive_hangs_up_before_its_settings(
    process_state: None,
) -> None:
    out = Collected()
    assert serve(io.BytesIO(b""), Outbox(out)) == 0
    assert out.messages == []


def test_serve_that_cannot_open_the_driver_says_why_and_ends(
    monkeypatch: pytest.MonkeyPatch, process_state: None
) -> None:
    monkeypatch.setitem(sys.modules, "pyvjoy", None)
    out = Collected()
    assert serve(io.BytesIO(lines(SETTINGS)), Outbox(out)) == 0
    [error] = out.messages
    assert error["kind"] == "DependencyError"
    assert error["error"].startswith("vJoy backend needs pyvjoy and the vJoy driver")


# --- the outbox: bounded, and never waited on ------------------------------------------------


class StoppedReading:
    """A drive that stopped reading: the first write blocks until `gate` opens."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.written: list[dict[str, Any]] = []

    def write(self, data: bytes) -> int:
        self.entered.set()
        self.gate.wait(5.0)
        self.written.append(json.loads(data))
        return len(data)

    def flush(self) -> None:
        pass


def test_the_outbox_keeps_256_messages_for_a_stalled_drive_and_counts_each_one_dropped() -> None:
    stream = StoppedReading()
    outbox = Outbox(stream)
    outbox.post({"n": 0})
    assert stream.entered.wait(5.0)  # the writer holds message 0, stuck in write
    assert outbox.dropped == 0
    for n in range(1, 301):
        outbox.post({"n": n})
    assert outbox.dropped == 300 - 256
    stream.gate.set()  # the drive reads again: what was kept goes out, in order
    outbox.close()
    assert stream.written == [{"n": n} for n in range(257)]


@pytest.mark.parametrize("queued", [0, 4])
def test_closing_the_outbox_of_a_stalled_drive_gives_up_after_its_timeout(queued: int) -> None:
    """Whether its queue is full (4 of 4) or not, close() does not wait for the drive."""
    stream = StoppedReading()
    outbox = Outbox(stream, size=4)
    outbox.post({"n": 0})
    assert stream.entered.wait(5.0)
    for n in range(queued):
        outbox.post({"n": n + 1})
    # The drive would read again in 2 s; close() must be back long before that.
    reading_again = threading.Timer(2.0, stream.gate.set)
    reading_again.start()
    try:
        outbox.close(timeout=0.1)
        assert stream.written == [], "close() waited for a drive that stopped reading"
    finally:
        reading_again.cancel()
        stream.gate.set()
