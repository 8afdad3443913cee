"""The controller process's own code, run in this process: its message loop, its outbox and
the key sender it uses on X11. (tests/test_controller_process.py runs the real process.)

vJoy is faked at the driver boundary (a `pyvjoy` module); the key sender sends real X events
to real windows on a private Xvfb.
"""

from __future__ import annotations

import json
import os
import select
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
        served.send({"neutral": 1})
        assert sorted(game.events(0.3)) == [("release", i), ("release", l_key)]
        assert other.events(0.05) == []
    finally:
        served.hang_up()
        game.close()
        other.close()


def test_a_new_game_window_is_aimed_at_only_after_letting_go() -> None:
    recorder = Recorder()
    assert apply(recorder, recorder, {"set": [0.5, 1, 0], "tag": 3})  # type: ignore[arg-type]
    assert apply(recorder, recorder, {"window": 42})  # type: ignore[arg-type]
    assert apply(recorder, recorder, {"window": 42})  # type: ignore[arg-type]  # the same
    assert apply(recorder, None, {"window": 43})  # type: ignore[arg-type]  # vJoy: no window
    assert not apply(recorder, recorder, {"close": 1})  # type: ignore[arg-type]
    assert recorder.done == [
        ("set", ControllerState(0.5, 1.0, 0.0), 3), "neutral", ("aim", 42),
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
    outbox.close(timeout=2)


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
    with pytest.raises(ConfigError):
        keysym_of(key(""))


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

    def events(self, seconds: float = 0.2) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.connection], [], [], left)
            while self.connection.pending_events():
                event = self.connection.next_event()
                if event.type in (self._X.KeyPress, self._X.KeyRelease):
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
        with pytest.raises(ConfigError, match="not on this keyboard layout"):
            sender.keycode(KeyCode.from_char("\u4e2d"))
    finally:
        sender.close()
        game.close()
        other.close()
    assert "BadWindow" not in capfd.readouterr().err


def test_a_focus_target_has_no_focus_before_the_drive_names_a_window(x_display: str) -> None:
    target = FocusTarget()
    window = EventWindow(x_display)
    try:
        assert not target.has_focus() and target.handle == 0
        window.window.set_input_focus(0, 0)  # X.RevertToNone, CurrentTime
        window.connection.sync()
        target.aim(window.id)
        assert target.handle == window.id and target.has_focus()
        target.aim(0)
        assert not target.has_focus()
    finally:
        window.close()
    assert ControllerState() == NEUTRAL
