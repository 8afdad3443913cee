"""Controller backends.

vJoy and ViGEmBus cannot exist here, so those two are tested at the driver boundary with fake
devices (asserting the exact calls the real driver would get). Everything else is real: the game
backend talks to a real GamepadReceiver, and the keyboard backend presses real keys through
pynput/XTest on a private Xvfb server, read back as X events by a window that has focus.
"""

from __future__ import annotations

import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.config import ControllerBackend, ControllerConfig, KeyboardConfig
from agent.controllers import BACKENDS, build_controller
from agent.controllers.game import GameController
from agent.controllers.keyboard import duty_cycles, roles_down, until_next_edge
from agent.controllers.null import NullController
from agent.controllers.vgamepad import VGamepadController
from agent.controllers.vjoy import VJoyController, vjoy_axes
from agent.errors import DependencyError
from agent.game.channel import GamepadReceiver
from agent.types import NEUTRAL, ControllerState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FULL_LEFT = ControllerState(steering=-1.0)
FULL_RIGHT = ControllerState(steering=1.0)
FULL_THROTTLE = ControllerState(accelerate=1.0)
FULL_BRAKE = ControllerState(brake=1.0)


def always() -> bool:
    return True


# --- factory and null ---------------------------------------------------------------------


def test_factory_knows_every_backend_the_config_allows() -> None:
    assert set(BACKENDS) == set(typing.get_args(ControllerBackend))
    with pytest.raises(ValueError, match="unknown controller backend 'joystick'"):
        build_controller(ControllerConfig(backend="joystick"), 0, always)


def test_factory_gives_every_backend_the_configured_hold(
    monkeypatch: pytest.MonkeyPatch, x_display: str
) -> None:
    monkeypatch.setitem(
        sys.modules, "pyvjoy", types.SimpleNamespace(VJoyDevice=lambda n: FakeVJoy())
    )
    monkeypatch.setitem(sys.modules, "vgamepad", types.SimpleNamespace(VX360Gamepad=FakePad))
    for backend in BACKENDS:
        controller = build_controller(ControllerConfig(backend=backend, hold=0.3), 47999, always)
        try:
            assert controller.name == backend
            assert controller.hold == 0.3, backend
        finally:
            controller.close()


def test_null_backend_remembers_the_last_clamped_state() -> None:
    controller = build_controller(ControllerConfig(backend="null"), 0, always)
    assert isinstance(controller, NullController)
    assert controller.last == NEUTRAL and controller.writes == 1  # the factory starts neutral
    assert NullController().last == NEUTRAL
    controller.set(ControllerState(0.5, 0.25, 0.0))
    assert controller.last == ControllerState(0.5, 0.25, 0.0)
    assert controller.writes == 2
    controller.set(ControllerState(-3.0, math.nan, 2.0))
    assert controller.last == ControllerState(-1.0, 0.0, 1.0)
    controller.neutral()
    controller.neutral()
    assert controller.last == NEUTRAL
    controller.set(FULL_THROTTLE)
    controller.close()
    assert controller.last == NEUTRAL
    writes = controller.writes
    controller.close()
    controller.set(FULL_THROTTLE)  # ignored: a closed controller stays neutral
    controller.neutral()
    assert (controller.last, controller.writes) == (NEUTRAL, writes)


class GatedVJoy:
    """A vJoy device whose first full-left write blocks until `gate` opens (a slow driver)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def set_axis(self, axis_id: int, value: int) -> None:
        if (axis_id, value) == (X, 0x1) and not self.gate.is_set():
            self.entered.set()
            self.gate.wait(5.0)
        self.calls.append((axis_id, value))


def test_close_waits_for_a_set_in_progress_and_leaves_the_device_neutral() -> None:
    """Without the device lock, close() would write neutral in the middle of a set()."""
    device = GatedVJoy()
    controller = VJoyController(1, vjoy=device)
    setter = threading.Thread(target=controller.set, args=(FULL_LEFT,))
    setter.start()
    assert device.entered.wait(2.0)
    closer = threading.Thread(target=controller.close)
    closer.start()
    time.sleep(0.2)  # time enough for an unlocked close() to write neutral now
    device.gate.set()
    setter.join(2.0)
    closer.join(2.0)
    assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)], device.calls
    controller.set(FULL_LEFT)
    assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]


# --- the dead-man: a command older than `hold` goes neutral by itself ------------------------


def test_every_device_backend_lets_go_of_a_stale_command_by_itself() -> None:
    """No thread calls the controller after set(): the backend's own thread must go neutral."""
    vjoy, pad = FakeVJoy(), FakePad()
    backends = [
        (VJoyController(1, vjoy=vjoy, hold=0.3), lambda: vjoy.calls[-3:]),
        (VGamepadController(pad=pad, hold=0.3), lambda: pad.calls[-4:]),
        (NullController(hold=0.3), None),
    ]
    neutral = {
        "vjoy": [(X, 0x4000), (Z, 0x1), (RZ, 0x1)],
        "vgamepad": pad_calls(0, 0, 0),
    }
    for controller, _ in backends:
        controller.set(ControllerState(steering=0.5, accelerate=1.0, brake=0.0))
    time.sleep(0.15)
    for controller, last_calls in backends:
        # Still applied within the hold.
        if last_calls is not None:
            assert last_calls() != neutral[controller.name], controller.name
        assert controller.releases == 0
    time.sleep(0.35)
    for controller, last_calls in backends:
        if last_calls is not None:
            assert last_calls() == neutral[controller.name], controller.name
        else:
            assert controller.last == NEUTRAL
        assert controller.releases == 1, controller.name
        controller.close()


def test_each_release_is_counted_and_told(caplog: pytest.LogCaptureFixture) -> None:
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device, hold=0.15)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.controllers.deadman"):
            for expected in (1, 2):
                controller.set(FULL_THROTTLE)
                deadline = time.monotonic() + 2.0
                while controller.releases < expected:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]
        assert [r.getMessage() for r in caplog.records] == [
            "vjoy controller: no new command for 0.1 s; controls neutral until the next one"
        ] * 2
    finally:
        controller.close()


def test_the_deadman_tries_again_when_the_driver_failed_to_go_neutral() -> None:
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device, hold=0.2)
    try:
        controller.set(FULL_THROTTLE)
        device.fail = True  # the driver is briefly gone when the command expires
        time.sleep(0.3)
        assert controller.releases == 0
        device.fail = False
        time.sleep(0.35)  # one hold later it writes neutral
        assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]
        assert controller.releases == 1
    finally:
        controller.close()


@pytest.mark.parametrize("hold", [0.0, -1.0, math.nan, math.inf])
def test_a_hold_must_be_a_positive_finite_time(hold: float) -> None:
    with pytest.raises(ValueError, match="hold must be a positive number of seconds"):
        NullController(hold=hold)


def test_a_controller_left_open_does_not_keep_the_program_alive() -> None:
    code = (
        "from agent.controllers.null import NullController\n"
        "from agent.types import ControllerState\n"
        "NullController(hold=5.0).set(ControllerState(accelerate=1.0))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_a_steady_stream_of_commands_is_never_cut() -> None:
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device, hold=0.2)
    try:
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            controller.set(FULL_THROTTLE)
            time.sleep(0.05)
        assert (Z, 0x1) not in device.calls[3:], "went neutral while commands kept coming"
        assert controller.releases == 0
        # Neutral is not a command to expire: nothing is written after it.
        controller.neutral()
        count = len(device.calls)
        time.sleep(0.4)
        assert len(device.calls) == count and controller.releases == 0
    finally:
        controller.close()


# --- game ---------------------------------------------------------------------------------


def _poll_until(receiver: GamepadReceiver, expected: ControllerState) -> ControllerState:
    deadline = time.monotonic() + 2.0
    state = receiver.poll()
    while state != pytest.approx(expected) and time.monotonic() < deadline:
        time.sleep(0.005)
        state = receiver.poll()
    return state


def test_game_backend_reaches_the_real_receiver_and_closes_neutral() -> None:
    # A long timeout, so NEUTRAL below is a received packet, not the receiver's silence rule.
    receiver = GamepadReceiver(port=0, timeout=10.0)
    try:
        config = ControllerConfig(backend="game")
        controller = build_controller(config, channel_port=receiver.port, has_focus=always)
        assert isinstance(controller, GameController)
        wanted = ControllerState(steering=-0.5, accelerate=0.75, brake=0.0)
        controller.set(wanted)
        assert _poll_until(receiver, wanted) == pytest.approx(wanted)
        controller.set(ControllerState(steering=4.0, accelerate=0.0, brake=1.5))
        clamped = ControllerState(steering=1.0, accelerate=0.0, brake=1.0)
        assert _poll_until(receiver, clamped) == clamped
        controller.close()
        assert _poll_until(receiver, NEUTRAL) == NEUTRAL
        controller.close()
        controller.set(FULL_THROTTLE)
        time.sleep(0.05)
        assert receiver.poll() == NEUTRAL
    finally:
        receiver.close()


def _poll_for(receiver: GamepadReceiver, seconds: float) -> list[ControllerState]:
    """Poll like the game does (every few ms) for `seconds`; every state read."""
    states = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states.append(receiver.poll())
        time.sleep(0.01)
    return states


def test_game_backend_holds_its_state_between_slow_predictions_then_lets_go() -> None:
    """A slow model must not look like a silent pad; a stalled agent must not hold the throttle."""
    receiver = GamepadReceiver(port=0, timeout=0.25)
    controller = GameController(receiver.port, hold=1.0)
    try:
        wanted = ControllerState(steering=0.25, accelerate=0.5, brake=0.0)
        controller.set(wanted)
        assert _poll_until(receiver, wanted) == pytest.approx(wanted)
        # Well past the receiver's silence timeout, but within the hold: still driving.
        assert all(state == pytest.approx(wanted) for state in _poll_for(receiver, 0.7))
        # Past the hold: the repeats stop and the pad reads neutral.
        assert _poll_for(receiver, 0.8)[-1] == NEUTRAL
        # A new command drives again.
        controller.set(FULL_THROTTLE)
        assert _poll_until(receiver, FULL_THROTTLE) == FULL_THROTTLE
        controller.neutral()
        assert _poll_until(receiver, NEUTRAL) == NEUTRAL
        assert set(_poll_for(receiver, 0.4)) == {NEUTRAL}
    finally:
        controller.close()
        receiver.close()


def test_game_backend_repeats_the_held_state_ten_times_a_second() -> None:
    """Often enough for the game's 0.5 s silence rule, without flooding the channel."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pad:
        pad.bind(("127.0.0.1", 0))
        pad.settimeout(0.05)
        controller = GameController(pad.getsockname()[1], hold=5.0)
        try:
            controller.set(FULL_THROTTLE)
            packets, end = 0, time.monotonic() + 1.0
            while time.monotonic() < end:
                try:
                    pad.recv(64)
                    packets += 1
                except TimeoutError:
                    pass
        finally:
            controller.close()
    assert 8 <= packets <= 13, packets  # the set() and about ten repeats


# --- vJoy (fake device at the pyvjoy boundary) --------------------------------------------

X, Z, RZ = 0x30, 0x32, 0x35


class FakeVJoy:
    """Stands in for pyvjoy.VJoyDevice: records set_axis calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail = fail

    def set_axis(self, axis_id: int, value: int) -> None:
        if self.fail:
            raise OSError("vJoy device lost")
        assert isinstance(axis_id, int) and isinstance(value, int)
        self.calls.append((axis_id, value))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (NEUTRAL, [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]),
        (FULL_LEFT, [(X, 0x1), (Z, 0x1), (RZ, 0x1)]),
        (FULL_RIGHT, [(X, 0x8000), (Z, 0x1), (RZ, 0x1)]),
        (FULL_THROTTLE, [(X, 0x4000), (Z, 0x8000), (RZ, 0x1)]),
        (FULL_BRAKE, [(X, 0x4000), (Z, 0x1), (RZ, 0x8000)]),
        (ControllerState(0.5, 0.5, 0.0), [(X, 0x6000), (Z, 0x4000), (RZ, 0x1)]),
        # Each half of the stick has its own span: 0x4000 right of centre, 0x3FFF left of it.
        (ControllerState(0.9, 0.0, 0.0), [(X, 31130), (Z, 0x1), (RZ, 0x1)]),
        (ControllerState(-0.9, 0.0, 0.0), [(X, 1639), (Z, 0x1), (RZ, 0x1)]),
    ],
)
def test_vjoy_axis_values(state: ControllerState, expected: list[tuple[int, int]]) -> None:
    assert list(vjoy_axes(state)) == expected
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device)
    controller.set(state)
    assert device.calls == expected


def test_vjoy_clamps_and_goes_neutral_on_close() -> None:
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device)
    controller.set(ControllerState(-9.0, math.inf, 2.0))
    assert device.calls == [(X, 0x1), (Z, 0x1), (RZ, 0x8000)]
    device.calls.clear()
    controller.close()
    assert device.calls == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]
    controller.close()
    controller.set(FULL_THROTTLE)
    controller.neutral()
    assert device.calls == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]


def test_vjoy_driver_failure_surfaces_in_set_but_not_in_neutral_or_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = VJoyController(1, vjoy=FakeVJoy(fail=True))
    assert controller.device == 1
    with pytest.raises(OSError):
        controller.set(FULL_THROTTLE)
    with caplog.at_level(logging.ERROR, logger="agent.controllers.base"):
        controller.neutral()  # logged, not raised: it runs in cleanup paths
        controller.close()
    messages = [r.getMessage() for r in caplog.records]
    assert "vjoy controller failed to go neutral" in messages, messages


def test_vjoy_uses_pyvjoy_device_number(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    device = FakeVJoy()

    def vjoy_device(number: int) -> FakeVJoy:
        opened.append(number)
        return device

    monkeypatch.setitem(sys.modules, "pyvjoy", types.SimpleNamespace(VJoyDevice=vjoy_device))
    controller = build_controller(ControllerConfig(backend="vjoy", vjoy_device=3), 0, always)
    assert opened == [3]
    assert device.calls == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]  # the factory starts neutral
    controller.close()


def test_vjoy_missing_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyvjoy", None)  # an import of it raises ImportError
    with pytest.raises(DependencyError) as caught:
        build_controller(ControllerConfig(backend="vjoy", vjoy_device=2), 0, always)
    message = str(caught.value)
    assert "vJoy driver" in message and "pip install pyvjoy" in message
    assert "device 2" in message and "\n" not in message


def test_vjoy_device_that_cannot_be_acquired_is_a_dependency_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def vjoy_device(number: int) -> FakeVJoy:
        raise RuntimeError("vJoy device is not enabled")

    monkeypatch.setitem(sys.modules, "pyvjoy", types.SimpleNamespace(VJoyDevice=vjoy_device))
    with pytest.raises(
        DependencyError, match=r"vJoy device 1 cannot be acquired \(RuntimeError: vJoy device is"
    ):
        VJoyController(1)


# --- vgamepad (fake pad at the vgamepad boundary) -----------------------------------------


class FakePad:
    """Stands in for vgamepad.VX360Gamepad: records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def left_joystick(self, x_value: int, y_value: int) -> None:
        self.calls.append(("left_joystick", x_value, y_value))

    def right_trigger(self, value: int) -> None:
        self.calls.append(("right_trigger", value))

    def left_trigger(self, value: int) -> None:
        self.calls.append(("left_trigger", value))

    def update(self) -> None:
        self.calls.append(("update",))


def pad_calls(stick: int, accelerate: int, brake: int) -> list[tuple[Any, ...]]:
    return [
        ("left_joystick", stick, 0),
        ("right_trigger", accelerate),
        ("left_trigger", brake),
        ("update",),
    ]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (NEUTRAL, pad_calls(0, 0, 0)),
        (FULL_LEFT, pad_calls(-32768, 0, 0)),
        (FULL_RIGHT, pad_calls(32767, 0, 0)),
        (FULL_THROTTLE, pad_calls(0, 255, 0)),
        (FULL_BRAKE, pad_calls(0, 0, 255)),
        (ControllerState(-0.5, 0.0, 0.5), pad_calls(-16384, 0, 128)),
        # Each half of the stick has its own span: 32767 to the right, 32768 to the left.
        (ControllerState(0.9, 0.0, 0.0), pad_calls(29490, 0, 0)),
        (ControllerState(-0.9, 0.0, 0.0), pad_calls(-29491, 0, 0)),
    ],
)
def test_vgamepad_values(state: ControllerState, expected: list[tuple[Any, ...]]) -> None:
    pad = FakePad()
    controller = VGamepadController(pad=pad)
    controller.set(state)
    assert pad.calls == expected


def test_vgamepad_clamps_and_goes_neutral_on_close() -> None:
    pad = FakePad()
    controller = VGamepadController(pad=pad)
    controller.set(ControllerState(2.0, 7.0, math.nan))
    assert pad.calls == pad_calls(32767, 255, 0)
    pad.calls.clear()
    controller.close()
    controller.close()
    controller.set(FULL_BRAKE)
    controller.neutral()
    assert pad.calls == pad_calls(0, 0, 0)


def test_vgamepad_uses_vx360gamepad(monkeypatch: pytest.MonkeyPatch) -> None:
    pad = FakePad()
    monkeypatch.setitem(sys.modules, "vgamepad", types.SimpleNamespace(VX360Gamepad=lambda: pad))
    controller = build_controller(ControllerConfig(backend="vgamepad"), 0, always)
    controller.set(FULL_RIGHT)
    assert pad.calls == pad_calls(0, 0, 0) + pad_calls(32767, 0, 0)
    controller.close()


def test_vgamepad_missing_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vgamepad", None)
    with pytest.raises(DependencyError) as caught:
        build_controller(ControllerConfig(backend="vgamepad"), 0, always)
    message = str(caught.value)
    assert "ViGEmBus" in message and "pip install vgamepad" in message and "\n" not in message


def test_vgamepad_without_bus_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_bus() -> FakePad:
        raise AssertionError("VIGEM_ERROR_BUS_NOT_FOUND")

    monkeypatch.setitem(sys.modules, "vgamepad", types.SimpleNamespace(VX360Gamepad=no_bus))
    with pytest.raises(
        DependencyError, match=r"\(AssertionError: VIGEM_ERROR_BUS_NOT_FOUND\).*ViGEmBus"
    ):
        VGamepadController()


# --- keyboard: pure pulse-width logic ------------------------------------------------------


def test_duty_cycles_follow_the_state() -> None:
    assert duty_cycles(ControllerState(-0.3, 0.6, 0.0)) == {
        "accelerate": 0.6,
        "brake": 0.0,
        "left": 0.3,
        "right": 0.0,
    }
    assert duty_cycles(ControllerState(5.0, math.nan, 0.2))["right"] == 1.0


def test_keys_are_down_for_their_fraction_of_the_period() -> None:
    duties = {"accelerate": 1.0, "brake": 0.0, "left": 0.0, "right": 0.3}
    assert roles_down(duties, 0.0) == {"accelerate", "right"}
    assert roles_down(duties, 0.29) == {"accelerate", "right"}
    assert roles_down(duties, 0.3) == {"accelerate"}
    assert roles_down(duties, 0.99) == {"accelerate"}
    assert until_next_edge(duties, 0.1) == pytest.approx(0.2)
    assert until_next_edge(duties, 0.5) == pytest.approx(0.5)  # to the period's end


def test_keyboard_without_a_display_is_a_dependency_error() -> None:
    # In a fresh interpreter: pynput needs the display at import time, and this one may have
    # imported it already.
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    code = (
        "from agent.config import KeyboardConfig\n"
        "from agent.controllers.keyboard import KeyboardController\n"
        "from agent.errors import DependencyError\n"
        "try:\n"
        "    KeyboardController(KeyboardConfig(), lambda: True)\n"
        "except DependencyError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "keyboard backend" in result.stdout and "DISPLAY" in result.stdout
    assert result.stdout.count("\n") == 1


# --- keyboard: real key events on a private X server ---------------------------------------


class KeyWindow:
    """An X window with keyboard focus that records the key events it receives."""

    def __init__(self, display_name: str) -> None:
        from Xlib import XK, X
        from Xlib.display import Display

        self._X = X
        self._XK = XK
        self.display = Display(display_name)
        # Autorepeat would add release/press pairs to a key held for longer than its delay.
        self.display.change_keyboard_control(auto_repeat_mode=X.AutoRepeatModeOff)
        screen = self.display.screen()
        self.window = screen.root.create_window(
            0, 0, 320, 240, 0, screen.root_depth, event_mask=X.KeyPressMask | X.KeyReleaseMask
        )
        self.window.map()
        self.display.sync()
        self.window.set_input_focus(X.RevertToParent, X.CurrentTime)
        self.display.sync()
        self.events: list[tuple[str, int, float]] = []
        """(press or release, keycode, monotonic seconds when read), oldest first.

        Read times, not the events' server times: Xvfb stamps XTest events with a clock that
        only moves with real input, so press and release carry the same time there.
        """

    def keycode(self, keysym_name: str) -> int:
        return self.display.keysym_to_keycode(self._XK.string_to_keysym(keysym_name))

    def collect(self, seconds: float) -> list[tuple[str, int, float]]:
        """Events that arrive within `seconds`; also appended to `events`."""
        new: list[tuple[str, int, float]] = []
        deadline = time.monotonic() + seconds
        while True:
            while self.display.pending_events():
                event = self.display.next_event()
                if event.type in (self._X.KeyPress, self._X.KeyRelease):
                    kind = "press" if event.type == self._X.KeyPress else "release"
                    new.append((kind, event.detail, time.monotonic()))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([self.display], [], [], min(left, 0.01))
        self.events.extend(new)
        return new

    def close(self) -> None:
        self.window.destroy()
        self.display.close()


@pytest.fixture
def key_window(x_display: str) -> Iterator[KeyWindow]:
    window = KeyWindow(x_display)
    window.collect(0.05)
    window.events.clear()
    yield window
    window.close()


def keyboard(config: KeyboardConfig, has_focus: Callable[[], bool], hold: float = 5.0) -> Any:
    """A keyboard controller whose dead-man stays out of the way of a test's second or so."""
    from agent.controllers.keyboard import KeyboardController

    return KeyboardController(config, has_focus, hold=hold)


def presses(events: list[tuple[str, int, float]], keycode: int) -> list[float]:
    """Lengths in ms of each completed press of `keycode`."""
    lengths, down = [], None
    for kind, code, at in events:
        if code != keycode:
            continue
        if kind == "press":
            assert down is None, f"keycode {keycode} pressed twice without a release"
            down = at
        else:
            assert down is not None, f"keycode {keycode} released without a press"
            lengths.append((at - down) * 1000.0)
            down = None
    return lengths


def balanced(events: list[tuple[str, int, float]]) -> bool:
    """Every press has its release."""
    codes = {code for _, code, _ in events}
    return all(
        sum(kind == "press" for kind, c, _ in events if c == code)
        == sum(kind == "release" for kind, c, _ in events if c == code)
        for code in codes
    )


def test_keyboard_pulses_steering_and_holds_full_throttle(key_window: KeyWindow) -> None:
    w, s, a, d = (key_window.keycode(name) for name in "wsad")
    controller = keyboard(KeyboardConfig(pulse_period=0.1), always)
    try:
        controller.set(ControllerState(steering=0.3, accelerate=1.0, brake=0.0))
        events = key_window.collect(1.0)
        assert [e[:2] for e in events if e[1] == w] == [("press", w)]  # held, not pulsed
        right = presses(events, d)
        assert 6 <= len(right) <= 12, right
        mean = sum(right) / len(right)
        assert 15 <= mean <= 50, right  # 30% of 100 ms
        assert not [e for e in events if e[1] in (a, s)]
        # neutral() releases before it returns: the events are already on their way.
        controller.neutral()
        assert controller.held == frozenset()
        key_window.collect(0.05)
        assert balanced(key_window.events), key_window.events
        assert not key_window.collect(0.25)  # and nothing is pressed again
        assert controller.error is None and controller.releases == 0
    finally:
        controller.close()


def test_keyboard_takes_a_capital_letter_as_the_key_without_shift(key_window: KeyWindow) -> None:
    w = key_window.keycode("w")
    controller = keyboard(KeyboardConfig(accelerate="W"), always)
    try:
        controller.set(FULL_THROTTLE)
        key_window.collect(0.2)
    finally:
        controller.close()
    key_window.collect(0.05)
    assert {code for _, code, _ in key_window.events} == {w}, key_window.events


def test_keyboard_from_the_factory_presses_only_with_focus(key_window: KeyWindow) -> None:
    focus = threading.Event()
    config = ControllerConfig(backend="keyboard", hold=0.5)
    controller = build_controller(config, 0, focus.is_set)
    try:
        controller.set(FULL_THROTTLE)
        assert key_window.collect(0.2) == []
        focus.set()
        assert ("press", key_window.keycode("w")) in [e[:2] for e in key_window.collect(0.2)]
    finally:
        controller.close()


def test_keyboard_named_keys_and_brake(key_window: KeyWindow) -> None:
    config = KeyboardConfig(accelerate="up", brake="space", left="Left", right="f8")
    up, space, left, f8 = (key_window.keycode(n) for n in ("Up", "space", "Left", "F8"))
    controller = keyboard(config, always)
    try:
        controller.set(ControllerState(steering=-0.6, accelerate=0.0, brake=0.2))
        events = key_window.collect(1.0)
        steer, brake = presses(events, left), presses(events, space)
        assert len(steer) >= 6 and len(brake) >= 6
        assert 40 <= sum(steer) / len(steer) <= 80, steer  # 60% of 100 ms
        assert 8 <= sum(brake) / len(brake) <= 35, brake  # 20% of 100 ms
        assert not [e for e in events if e[1] in (up, f8)]
    finally:
        controller.close()
    key_window.collect(0.05)
    assert balanced(key_window.events), key_window.events


def test_keyboard_presses_nothing_without_focus(key_window: KeyWindow) -> None:
    focus = threading.Event()
    w = key_window.keycode("w")
    controller = keyboard(KeyboardConfig(), focus.is_set)
    try:
        controller.set(ControllerState(steering=-1.0, accelerate=1.0, brake=0.0))
        assert key_window.collect(0.3) == []
        assert controller.held == frozenset()
        focus.set()
        pressed = key_window.collect(0.2)
        assert ("press", w) in [e[:2] for e in pressed]
        focus.clear()
        # Released within the focus poll (20 ms), not at the end of some period.
        released = key_window.collect(0.1)
        assert ("release", w) in [e[:2] for e in released]
        assert balanced(key_window.events), key_window.events
        assert key_window.collect(0.3) == []
    finally:
        controller.close()


def test_keyboard_close_releases_every_key(key_window: KeyWindow) -> None:
    controller = keyboard(KeyboardConfig(), always)
    controller.set(ControllerState(steering=0.8, accelerate=1.0, brake=0.0))
    key_window.collect(0.25)
    assert controller.held  # w at least is down right now
    controller.close()
    key_window.collect(0.05)
    assert key_window.events and balanced(key_window.events), key_window.events
    assert not controller._thread.is_alive()
    controller.close()
    controller.neutral()
    controller.set(FULL_THROTTLE)
    assert key_window.collect(0.25) == []


def test_keyboard_releases_a_stale_command_by_itself(key_window: KeyWindow) -> None:
    """After set() and no further call, W must not stay down (it was held for 6 s and more)."""
    from agent.controllers.keyboard import KeyboardController

    w, d = key_window.keycode("w"), key_window.keycode("d")
    controller = KeyboardController(KeyboardConfig(), always, hold=0.4)
    try:
        controller.set(ControllerState(steering=0.5, accelerate=1.0, brake=0.0))
        early = key_window.collect(0.25)
        assert ("press", w) in [e[:2] for e in early]
        assert controller.held and controller.releases == 0
        key_window.collect(0.35)
        assert controller.held == frozenset() and controller.releases == 1
        assert balanced(key_window.events), key_window.events
        assert key_window.collect(0.3) == [], "keys pressed again without a new command"
        assert d in {code for _, code, _ in key_window.events}
        # A new command drives again.
        controller.set(FULL_THROTTLE)
        assert ("press", w) in [e[:2] for e in key_window.collect(0.15)]
    finally:
        controller.close()


def test_keyboard_thread_error_releases_keys_and_is_recorded(key_window: KeyWindow) -> None:
    broken = threading.Event()

    def has_focus() -> bool:
        if broken.is_set():
            raise RuntimeError("focus check broke")
        return True

    w = key_window.keycode("w")
    controller = keyboard(KeyboardConfig(), has_focus)
    try:
        controller.set(FULL_THROTTLE)
        assert ("press", w) in [e[:2] for e in key_window.collect(0.15)]
        broken.set()
        released = key_window.collect(0.15)
        assert ("release", w) in [e[:2] for e in released]
        assert isinstance(controller.error, RuntimeError)
        assert controller.held == frozenset()
        with pytest.raises(RuntimeError, match="focus check broke"):
            controller.set(FULL_THROTTLE)
    finally:
        controller.close()
    assert balanced(key_window.events)


def test_keyboard_releases_keys_when_the_program_exits_without_close(
    key_window: KeyWindow,
) -> None:
    code = (
        "import time\n"
        "from agent.config import KeyboardConfig\n"
        "from agent.controllers.keyboard import KeyboardController\n"
        "from agent.types import ControllerState\n"
        "controller = KeyboardController(KeyboardConfig(), lambda: True)\n"
        "controller.set(ControllerState(steering=-1.0, accelerate=1.0))\n"
        "time.sleep(0.3)\n"  # then exit with both keys down and no close()
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    key_window.collect(0.1)
    pressed = {code for kind, code, _ in key_window.events if kind == "press"}
    assert pressed == {key_window.keycode("w"), key_window.keycode("a")}
    assert balanced(key_window.events), key_window.events
