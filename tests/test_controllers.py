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
import subprocess
import sys
import threading
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
from tests.helpers.clock import FakeClock
from tests.helpers.waiting import wait_until

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


def test_factory_gives_every_backend_the_configured_hold_and_clock(
    monkeypatch: pytest.MonkeyPatch, x_display: str
) -> None:
    monkeypatch.setitem(
        sys.modules, "pyvjoy", types.SimpleNamespace(VJoyDevice=lambda n: FakeVJoy())
    )
    monkeypatch.setitem(sys.modules, "vgamepad", types.SimpleNamespace(VX360Gamepad=FakePad))
    clock = FakeClock()
    for backend in BACKENDS:
        config = ControllerConfig(backend=backend, hold=0.3)
        controller = build_controller(config, 47999, always, clock=clock)
        clock.settle(waiters=1)
        try:
            assert controller.name == backend
            assert controller.hold == 0.3, backend
            controller.set(FULL_THROTTLE)
            clock.advance(0.29)
            assert controller.releases == 0, backend
            clock.advance(0.02)  # its dead-man keeps time on the clock it was given
            assert controller.releases == 1, backend
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


class WatchedLock:
    """A re-entrant lock that notes every thread that found it taken and had to wait."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.waited: list[threading.Thread] = []

    def __enter__(self) -> WatchedLock:
        if not self._lock.acquire(blocking=False):
            self.waited.append(threading.current_thread())
            self._lock.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def test_close_waits_for_a_set_in_progress_and_leaves_the_device_neutral() -> None:
    """Without the device lock, close() would write neutral in the middle of a set()."""
    device = GatedVJoy()
    controller = VJoyController(1, vjoy=device)
    lock = controller._lock = WatchedLock()  # type: ignore[assignment]
    setter = threading.Thread(target=controller.set, args=(FULL_LEFT,))
    setter.start()
    assert device.entered.wait(2.0)
    closer = threading.Thread(target=controller.close)
    closer.start()
    # The gate opens only once close() waits for the set() in progress (or never: red).
    assert wait_until(lambda: closer in lock.waited), "close() did not wait for the device lock"
    device.gate.set()
    setter.join(2.0)
    closer.join(2.0)
    assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)], device.calls
    controller.set(FULL_LEFT)
    assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]


# --- the dead-man: a command older than `hold` goes neutral by itself ------------------------
# On a fake clock: each rule is checked just before and just after its moment, not with a sleep
# and a margin. The backends' own threads still do the work.


def test_every_device_backend_lets_go_of_a_stale_command_by_itself() -> None:
    """No thread calls the controller after set(): the backend's own thread must go neutral."""
    clock = FakeClock()
    vjoy, pad = FakeVJoy(), FakePad()
    backends = [
        (VJoyController(1, vjoy=vjoy, hold=0.3, clock=clock), lambda: vjoy.calls[-3:]),
        (VGamepadController(pad=pad, hold=0.3, clock=clock), lambda: pad.calls[-4:]),
        (NullController(hold=0.3, clock=clock), None),
    ]
    neutral = {
        "vjoy": [(X, 0x4000), (Z, 0x1), (RZ, 0x1)],
        "vgamepad": pad_calls(0, 0, 0),
    }
    clock.settle(waiters=len(backends))
    for controller, _ in backends:
        controller.set(ControllerState(steering=0.5, accelerate=1.0, brake=0.0))
    clock.advance(0.99 * 0.3)
    for controller, last_calls in backends:
        # Still applied within the hold.
        if last_calls is not None:
            assert last_calls() != neutral[controller.name], controller.name
        else:
            assert controller.last != NEUTRAL
        assert controller.releases == 0
    clock.advance(0.02 * 0.3)
    for controller, last_calls in backends:
        if last_calls is not None:
            assert last_calls() == neutral[controller.name], controller.name
        else:
            assert controller.last == NEUTRAL
        assert controller.releases == 1, controller.name
        controller.close()


def test_each_release_is_counted_and_told(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device, hold=0.15, clock=clock)
    clock.settle(waiters=1)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.controllers.deadman"):
            for expected in (1, 2):
                controller.set(FULL_THROTTLE)
                clock.advance(0.151)
                assert controller.releases == expected
                assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]
        assert [r.getMessage() for r in caplog.records] == [
            "vjoy controller: no new command for 0.1 s; controls neutral until the next one"
        ] * 2
    finally:
        controller.close()


def test_the_deadman_tries_again_when_the_driver_failed_to_go_neutral(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device, hold=0.2, clock=clock)
    clock.settle(waiters=1)
    try:
        controller.set(FULL_THROTTLE)
        device.fail = True  # the driver is briefly gone when the command expires
        clock.advance(0.201)
        assert controller.releases == 0
        device.fail = False
        clock.advance(0.19)
        assert controller.releases == 0 and device.calls[-2] == (Z, 0x8000)
        clock.advance(0.02)  # one hold after the failed try it writes neutral
        assert device.calls[-3:] == [(X, 0x4000), (Z, 0x1), (RZ, 0x1)]
        assert controller.releases == 1
        [failed] = [r for r in caplog.records if r.name == "agent.controllers.base"]
        assert (failed.levelno, failed.getMessage()) == (
            logging.ERROR,
            "vjoy controller's dead-man could not write",
        )
        assert failed.exc_info and isinstance(failed.exc_info[1], OSError)
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
    """Each command renews the hold: commands 0.9 hold apart keep driving for as long as they
    come, and neutral is not a command to expire."""
    clock = FakeClock()
    device = FakeVJoy()
    controller = VJoyController(1, vjoy=device, hold=0.2, clock=clock)
    clock.settle(waiters=1)
    try:
        for _ in range(10):  # ten holds' worth of commands
            controller.set(FULL_THROTTLE)
            clock.advance(0.9 * 0.2)
        assert (Z, 0x1) not in device.calls[3:], "went neutral while commands kept coming"
        assert controller.releases == 0
        # Neutral is not a command to expire: nothing is written after it.
        controller.neutral()
        count = len(device.calls)
        clock.advance(2.0)
        assert len(device.calls) == count and controller.releases == 0
    finally:
        controller.close()


# --- game ---------------------------------------------------------------------------------


def _poll_until(receiver: GamepadReceiver, expected: ControllerState) -> ControllerState:
    wait_until(lambda: receiver.poll() == pytest.approx(expected), timeout=2.0)
    return receiver.poll()


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
        controller.close()  # twice: idempotent
    finally:
        receiver.close()


class SentGameController(GameController):
    """The bundled game's pad backend, each packet it sends noted with the time it went."""

    def __init__(self, port: int, hold: float, clock: FakeClock) -> None:
        self.sent: list[tuple[float, ControllerState]] = []
        super().__init__(port, hold=hold, clock=clock)

    def _write(self, state: ControllerState, tag: int) -> None:
        super()._write(state, tag)
        self.sent.append((self._clock.now(), state))


def test_game_backend_holds_its_state_between_slow_predictions_then_lets_go() -> None:
    """A slow model must not look like a silent pad; a stalled agent must not hold the throttle.

    The game reads a pad silent for 0.5 s as neutral: the backend sends the held state again
    every REPEAT_PERIOD (0.1 s) until the hold ends, then neutral once, then nothing."""
    from agent.controllers.game import REPEAT_PERIOD

    receiver = GamepadReceiver(port=0, timeout=60.0)
    clock = FakeClock()
    controller = SentGameController(receiver.port, hold=1.0, clock=clock)
    clock.settle(waiters=1)
    try:
        start = clock.now()
        wanted = ControllerState(steering=0.25, accelerate=0.5, brake=0.0)
        controller.set(wanted)
        clock.advance(0.999)
        times = [at - start for at, _ in controller.sent]
        assert times == pytest.approx([round(0.1 * k, 1) for k in range(10)])  # the set, 9 repeats
        assert {state for _, state in controller.sent} == {wanted}
        assert REPEAT_PERIOD == 0.1
        # Past the hold: neutral once, then silence (the game's own rule keeps it neutral).
        clock.advance(0.002)
        assert controller.sent[-1] == (pytest.approx(start + 1.0), NEUTRAL)
        count = len(controller.sent)
        clock.advance(2.0)
        assert len(controller.sent) == count
        assert _poll_until(receiver, NEUTRAL) == NEUTRAL  # what went out reached the game
        # A new command drives again; neutral is sent once and not repeated.
        controller.set(FULL_THROTTLE)
        assert _poll_until(receiver, FULL_THROTTLE) == FULL_THROTTLE
        controller.neutral()
        count = len(controller.sent)
        clock.advance(2.0)
        assert len(controller.sent) == count and controller.sent[-1][1] == NEUTRAL
        assert controller.releases == 1
    finally:
        controller.close()
        receiver.close()


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
    controller.close()


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
    controller.close()


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
        self.events: list[tuple[str, int]] = []
        """(press or release, keycode), oldest first."""

    def keycode(self, keysym_name: str) -> int:
        return self.display.keysym_to_keycode(self._XK.string_to_keysym(keysym_name))

    def drain(self) -> list[tuple[str, int]]:
        """Every event the server has sent so far; also appended to `events`.

        The keyboard's key sender waits for the server to take each event (pynput syncs), and
        this round trip comes back after the events it caused: nothing sent is still on the way.
        """
        self.display.sync()
        new: list[tuple[str, int]] = []
        while self.display.pending_events():
            event = self.display.next_event()
            if event.type in (self._X.KeyPress, self._X.KeyRelease):
                new.append(("press" if event.type == self._X.KeyPress else "release", event.detail))
        self.events.extend(new)
        return new

    def close(self) -> None:
        self.window.destroy()
        self.display.close()


@pytest.fixture
def key_window(x_display: str) -> Iterator[KeyWindow]:
    window = KeyWindow(x_display)
    window.drain()
    window.events.clear()
    yield window
    window.close()


class TimedKeys:
    """pynput's real keyboard as the key sender, each press and release noted on the clock."""

    def __init__(self, clock: FakeClock) -> None:
        from pynput.keyboard import Controller

        self._keyboard = Controller()
        self._clock = clock
        self.sent: list[tuple[str, Any, float]] = []
        """(press or release, pynput key, fake time), oldest first."""

    def keycode(self, key: Any) -> int:
        return 0  # every key the tests configure exists on the test server's keyboard

    def press(self, key: Any) -> None:
        self._keyboard.press(key)
        self.sent.append(("press", key, self._clock.now()))

    def release(self, key: Any) -> None:
        self._keyboard.release(key)
        self.sent.append(("release", key, self._clock.now()))

    def presses(self, key: Any) -> list[tuple[float, float]]:
        """(start, length) in seconds of each completed press of `key`."""
        done, down = [], None
        for kind, sent, at in self.sent:
            if sent != key:
                continue
            if kind == "press":
                assert down is None, f"{key} pressed twice without a release"
                down = at
            else:
                assert down is not None, f"{key} released without a press"
                done.append((down, at - down))
                down = None
        return done


def keyboard(
    config: KeyboardConfig,
    has_focus: Callable[[], bool],
    clock: FakeClock,
    hold: float = 5.0,
) -> tuple[Any, TimedKeys]:
    """A keyboard controller on `clock`, its thread waiting on it; and its (real) key sender."""
    from agent.controllers.keyboard import KeyboardController

    keys = TimedKeys(clock)
    controller = KeyboardController(config, has_focus, hold=hold, sender=keys, clock=clock)
    clock.settle(waiters=1)
    return controller, keys


def key(name: str) -> Any:
    """A config key name as the pynput key the controller presses."""
    from pynput import keyboard as pynput_keyboard

    from agent.controllers.keyboard import resolve_key

    return resolve_key(name, pynput_keyboard)


def balanced(events: list[tuple[str, int]]) -> bool:
    """Every press has its release."""
    codes = {code for _, code in events}
    return all(events.count(("press", code)) == events.count(("release", code)) for code in codes)


def test_keyboard_pulses_steering_and_holds_full_throttle(key_window: KeyWindow) -> None:
    w, s, a, d = (key_window.keycode(name) for name in "wsad")
    # A clock that starts at no whole number of periods: they count from the controller's start.
    clock = FakeClock(start=1000.03)
    controller, keys = keyboard(KeyboardConfig(pulse_period=0.1), always, clock)
    try:
        start = clock.now()
        controller.set(ControllerState(steering=0.3, accelerate=1.0, brake=0.0))
        clock.advance(0.999)
        # D (right) for 30% of each 100 ms period, from the start of the period; W held.
        right = keys.presses(key("d"))
        assert [at - start for at, _ in right] == pytest.approx([0.1 * k for k in range(10)])
        assert [length for _, length in right] == pytest.approx([0.03] * 10)
        assert [(kind, sent) for kind, sent, _ in keys.sent if sent == key("w")] == [
            ("press", key("w"))
        ]  # held, not pulsed
        # The X server saw the same key strokes.
        events = key_window.drain()
        assert [e for e in events if e[1] == w] == [("press", w)]
        assert events.count(("press", d)) == 10 and events.count(("release", d)) == 10
        assert not [e for e in events if e[1] in (a, s)]
        # neutral() releases before it returns.
        controller.neutral()
        assert controller.held == frozenset()
        key_window.drain()
        assert balanced(key_window.events), key_window.events
        clock.advance(0.5)
        assert key_window.drain() == []  # and nothing is pressed again
        assert controller.error is None and controller.releases == 0
    finally:
        controller.close()


def test_keyboard_takes_a_capital_letter_as_the_key_without_shift(key_window: KeyWindow) -> None:
    w = key_window.keycode("w")
    clock = FakeClock()
    controller, _ = keyboard(KeyboardConfig(accelerate="W"), always, clock)
    try:
        controller.set(FULL_THROTTLE)
        clock.settle()
    finally:
        controller.close()
    assert key_window.drain() == [("press", w), ("release", w)]


def test_keyboard_from_the_factory_presses_only_with_focus(key_window: KeyWindow) -> None:
    """Through build_controller, with its hold and clock: the real pynput keyboard."""
    focus = threading.Event()
    clock = FakeClock()
    config = ControllerConfig(backend="keyboard", hold=0.5)
    controller = build_controller(config, 0, focus.is_set, clock=clock)
    clock.settle(waiters=1)
    try:
        controller.set(FULL_THROTTLE)
        clock.advance(0.2)
        assert key_window.drain() == []
        focus.set()
        clock.advance(0.02)  # the focus poll
        assert key_window.drain() == [("press", key_window.keycode("w"))]
        clock.advance(0.5)  # the hold, from the set() 0.22 s ago
        assert key_window.drain() == [("release", key_window.keycode("w"))]
        assert controller.releases == 1
    finally:
        controller.close()


def test_keyboard_named_keys_and_brake(key_window: KeyWindow) -> None:
    config = KeyboardConfig(accelerate="up", brake="space", left="Left", right="f8")
    up, space, left, f8 = (key_window.keycode(n) for n in ("Up", "space", "Left", "F8"))
    clock = FakeClock()
    controller, keys = keyboard(config, always, clock)
    try:
        controller.set(ControllerState(steering=-0.6, accelerate=0.0, brake=0.2))
        clock.advance(0.999)
        steer, brake = keys.presses(key("Left")), keys.presses(key("space"))
        assert [length for _, length in steer] == pytest.approx([0.06] * 10)  # 60% of 100 ms
        assert [length for _, length in brake] == pytest.approx([0.02] * 10)  # 20% of 100 ms
        events = key_window.drain()
        assert events.count(("press", left)) == 10 and events.count(("press", space)) == 10
        assert not [e for e in events if e[1] in (up, f8)]
    finally:
        controller.close()
    key_window.drain()
    assert balanced(key_window.events), key_window.events


def test_keyboard_presses_nothing_without_focus(key_window: KeyWindow) -> None:
    focus = threading.Event()
    w, a = key_window.keycode("w"), key_window.keycode("a")
    clock = FakeClock()
    controller, _ = keyboard(KeyboardConfig(), focus.is_set, clock)
    try:
        controller.set(ControllerState(steering=-1.0, accelerate=1.0, brake=0.0))
        clock.advance(0.3)
        assert key_window.drain() == []
        assert controller.held == frozenset()
        focus.set()
        clock.advance(0.02)  # seen at the next focus poll
        assert sorted(key_window.drain()) == [("press", w), ("press", a)]
        focus.clear()
        # Released within the focus poll (20 ms), not at the end of some period.
        clock.advance(0.02)
        assert sorted(key_window.drain()) == [("release", w), ("release", a)]
        clock.advance(0.3)
        assert key_window.drain() == []
    finally:
        controller.close()


def test_keyboard_close_releases_every_key(key_window: KeyWindow) -> None:
    clock = FakeClock()
    controller, _ = keyboard(KeyboardConfig(), always, clock)
    controller.set(ControllerState(steering=0.8, accelerate=1.0, brake=0.0))
    clock.advance(0.05)
    assert controller.held  # w and d are down right now
    controller.close()
    key_window.drain()
    assert key_window.events and balanced(key_window.events), key_window.events
    assert not controller._thread.is_alive()
    controller.close()
    controller.neutral()
    controller.set(FULL_THROTTLE)
    clock.advance(0.25)
    assert key_window.drain() == []


def test_keyboard_releases_a_stale_command_by_itself(
    key_window: KeyWindow, caplog: pytest.LogCaptureFixture
) -> None:
    """After set() and no further call, W must not stay down (it was held for 6 s and more)."""
    w, d = key_window.keycode("w"), key_window.keycode("d")
    clock = FakeClock()
    controller, _ = keyboard(KeyboardConfig(), always, clock, hold=0.4)
    try:
        controller.set(ControllerState(steering=0.5, accelerate=1.0, brake=0.0))
        clock.advance(0.99 * 0.4)
        assert ("press", w) in key_window.drain()
        assert controller.held and controller.releases == 0
        with caplog.at_level(logging.WARNING, logger="agent.controllers.deadman"):
            clock.advance(0.02 * 0.4)
        assert controller.held == frozenset() and controller.releases == 1
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(
            logging.WARNING,
            "keyboard controller: no new command for 0.4 s; controls neutral until the next one",
        )]  # fmt: skip
        key_window.drain()
        assert balanced(key_window.events), key_window.events
        clock.advance(1.0)
        assert key_window.drain() == [], "keys pressed again without a new command"
        assert d in {code for _, code in key_window.events}
        # A new command drives again.
        controller.set(FULL_THROTTLE)
        clock.settle()
        assert key_window.drain() == [("press", w)]
    finally:
        controller.close()


def test_keyboard_thread_error_releases_keys_and_is_recorded(
    key_window: KeyWindow, caplog: pytest.LogCaptureFixture
) -> None:
    broken = threading.Event()

    def has_focus() -> bool:
        if broken.is_set():
            raise RuntimeError("focus check broke")
        return True

    w = key_window.keycode("w")
    clock = FakeClock()
    controller, _ = keyboard(KeyboardConfig(), has_focus, clock)
    try:
        controller.set(FULL_THROTTLE)
        clock.settle()
        assert key_window.drain() == [("press", w)]
        broken.set()
        with caplog.at_level(logging.ERROR, logger="agent.controllers.keyboard"):
            clock.advance(0.02)  # the next focus poll fails
        assert key_window.drain() == [("release", w)]
        [stopped] = caplog.records
        assert (stopped.levelno, stopped.getMessage()) == (
            logging.ERROR,
            "keyboard controller stopped; releasing all keys: focus check broke",
        )
        # Not a user's problem: a bug, with its traceback.
        assert stopped.exc_info and isinstance(stopped.exc_info[1], RuntimeError)
        assert isinstance(controller.error, RuntimeError)
        assert controller.held == frozenset() and not controller._thread.is_alive()
        with pytest.raises(RuntimeError, match="focus check broke"):
            controller.set(FULL_THROTTLE)
    finally:
        controller.close()
    assert balanced(key_window.events)


def test_keyboard_releases_keys_when_the_program_exits_without_close(
    key_window: KeyWindow,
) -> None:
    """On the real clock, in a program of its own that ends with both keys down."""
    code = (
        "import time\n"
        "from agent.config import KeyboardConfig\n"
        "from agent.controllers.keyboard import KeyboardController\n"
        "from agent.types import ControllerState\n"
        "controller = KeyboardController(KeyboardConfig(), lambda: True)\n"
        "controller.set(ControllerState(steering=-1.0, accelerate=1.0))\n"
        "deadline = time.monotonic() + 10\n"
        "while len(controller.held) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.005)\n"  # until the pulse thread holds both, then exit without close()
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    key_window.drain()
    pressed = {code for kind, code in key_window.events if kind == "press"}
    assert pressed == {key_window.keycode("w"), key_window.keycode("a")}
    assert balanced(key_window.events), key_window.events


def test_pynput_missing_or_without_a_desktop_is_one_line_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.abc

    from agent.controllers.keyboard import _load_pynput_keyboard

    for name in [n for n in sys.modules if n == "pynput" or n.startswith("pynput.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pynput", None)  # not installed
    with pytest.raises(DependencyError) as missing:
        _load_pynput_keyboard()
    assert str(missing.value) == "keyboard backend needs pynput; run: pip install pynput"
    monkeypatch.delitem(sys.modules, "pynput")

    class NoDesktop(importlib.abc.MetaPathFinder):
        """pynput's import-time probe of the display, failing as it does without X."""

        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "pynput" or name.startswith("pynput."):
                raise ImportError("this platform is not supported: 'no display'\nTry this:")

    monkeypatch.setattr(sys, "meta_path", [NoDesktop(), *sys.meta_path])
    with pytest.raises(DependencyError) as no_desktop:
        _load_pynput_keyboard()
    assert str(no_desktop.value) == (
        "keyboard backend cannot reach the desktop (this platform is not supported: 'no "
        "display'); run Charles inside the desktop session that shows the game (on Linux: X11 "
        "with DISPLAY set) or choose another controller.backend"
    )


# --- what each backend tells, and the details the drive relies on --------------------------


def test_game_backend_carries_each_commands_tag_and_none_with_neutral() -> None:
    """The tag names the frame a command came from (the game reports when it applied it);
    neutral, from neutral() or the dead-man, comes from no frame: tag 0."""
    receiver = GamepadReceiver(port=0, timeout=60.0)
    clock = FakeClock()
    controller = GameController(receiver.port, hold=0.5, clock=clock)
    clock.settle(waiters=1)

    def tag_of(state: ControllerState) -> int:
        _poll_until(receiver, state)
        return receiver.tag

    try:
        controller.set(FULL_LEFT, tag=7)
        assert tag_of(FULL_LEFT) == 7
        controller.set(FULL_RIGHT)
        assert tag_of(FULL_RIGHT) == 0  # untagged
        controller.set(FULL_LEFT, tag=8)
        assert tag_of(FULL_LEFT) == 8
        controller.neutral()
        assert tag_of(NEUTRAL) == 0
        controller.set(FULL_THROTTLE, tag=9)
        assert tag_of(FULL_THROTTLE) == 9
        clock.advance(0.501)  # the dead-man lets go
        assert tag_of(NEUTRAL) == 0 and controller.releases == 1
    finally:
        controller.close()
        receiver.close()


def test_game_backend_repeats_its_state_the_moment_the_period_is_up() -> None:
    """On a clock from zero the first repeat falls exactly REPEAT_PERIOD after the set: it is
    due then, not a moment later."""
    receiver = GamepadReceiver(port=0, timeout=60.0)
    clock = FakeClock(start=0.0)
    controller = SentGameController(receiver.port, hold=1.0, clock=clock)
    clock.settle(waiters=1)
    try:
        controller.set(FULL_THROTTLE)
        clock.advance(0.1)
        assert controller.sent == [(0.0, FULL_THROTTLE), (0.1, FULL_THROTTLE)]
    finally:
        controller.close()
        receiver.close()


class PadThatWillNotUnplug(NullController):
    """A device whose driver fails to free it."""

    def _release(self) -> None:
        raise OSError("device busy")


def test_a_device_that_fails_to_close_is_logged_and_the_controller_stays_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = PadThatWillNotUnplug()
    controller.set(FULL_THROTTLE)
    with caplog.at_level(logging.ERROR, logger="agent.controllers.base"):
        controller.close()  # logged, not raised: it runs in cleanup paths
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.ERROR,
        "null controller failed to close its device",
    )
    assert record.exc_info and isinstance(record.exc_info[1], OSError)
    assert controller.closed and controller.last == NEUTRAL
    controller.set(FULL_THROTTLE)
    assert controller.last == NEUTRAL


def test_null_backend_logs_each_state_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    """What a dry run shows with debug logging: every state it would have sent."""
    with caplog.at_level(logging.DEBUG, logger="agent.controllers.null"):
        controller = NullController()
        controller.set(ControllerState(0.5, 0.25, 0.0))
    controller.close()
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("null")] == [
        (
            logging.DEBUG,
            "null controller: ControllerState(steering=0.5, accelerate=0.25, brake=0.0)",
        )
    ]


def test_vjoy_opens_device_1_unless_told_otherwise_and_says_which(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opened: list[int] = []

    def vjoy_device(number: int) -> FakeVJoy:
        opened.append(number)
        return FakeVJoy()

    monkeypatch.setitem(sys.modules, "pyvjoy", types.SimpleNamespace(VJoyDevice=vjoy_device))
    with caplog.at_level(logging.INFO, logger="agent.controllers.vjoy"):
        VJoyController().close()
        VJoyController(3).close()
    assert opened == [1, 3]
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("vjoy")] == [
        (logging.INFO, "vJoy device 1 acquired"),
        (logging.INFO, "vJoy device 3 acquired"),
    ]


def test_vgamepad_says_when_its_pad_is_connected(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agent.controllers.vgamepad"):
        VGamepadController(pad=FakePad()).close()
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("vgamepad")] == [
        (logging.INFO, "virtual Xbox 360 pad connected")
    ]


def test_config_key_names_become_keys_and_an_unknown_name_is_one_line() -> None:
    """On pynput's key types (faked here: a single character, or a `Key` member's name)."""
    from agent.controllers.keyboard import resolve_key
    from agent.errors import ConfigError

    class Key:
        up = "<up>"
        space = "<space>"

    keyboard_module = types.SimpleNamespace(
        KeyCode=types.SimpleNamespace(from_char=lambda char: f"<char {char}>"), Key=Key
    )
    assert resolve_key("W", keyboard_module) == "<char w>"  # the W key, not Shift+W
    assert resolve_key("Up", keyboard_module) == "<up>"
    with pytest.raises(ConfigError) as caught:
        resolve_key("scroll", keyboard_module)
    assert str(caught.value) == (
        "keyboard key 'scroll' is not known on this system; use a single character or a key "
        "name such as up, space, f8"
    )


def test_a_keyboard_the_desktop_will_not_open_is_one_line_naming_the_fix() -> None:
    from agent.controllers.keyboard import _open_pynput

    def no_desktop() -> None:
        raise RuntimeError("can't connect to display ':9'")

    with pytest.raises(DependencyError) as caught:
        _open_pynput(types.SimpleNamespace(Controller=no_desktop))
    assert str(caught.value) == (
        "keyboard backend cannot open the desktop's keyboard (can't connect to display ':9'); "
        "run Charles inside the desktop session that shows the game"
    )


class RecordingSender:
    """A key sender (the interface of agent.controllers.xkeys): notes the keys it is asked to
    press and release; `failing` makes releases fail as they do when the window is gone."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.failing = False

    def keycode(self, key: Any) -> int:
        return 1

    def press(self, key: Any) -> None:
        self.sent.append(("press", key))

    def release(self, key: Any) -> None:
        if self.failing:
            raise OSError("the game's window is gone")
        self.sent.append(("release", key))


def test_the_factory_gives_the_keyboard_its_key_sender(key_window: KeyWindow) -> None:
    sender, clock = RecordingSender(), FakeClock()
    config = ControllerConfig(backend="keyboard", hold=5.0)
    controller = build_controller(config, 0, always, key_sender=sender, clock=clock)
    clock.settle(waiters=1)
    try:
        controller.set(FULL_THROTTLE)
        clock.settle()
        assert sender.sent == [("press", key("w"))]
        assert key_window.drain() == []  # nothing went through pynput
    finally:
        controller.close()


def test_a_key_that_cannot_be_released_is_told_kept_and_released_later(
    x_display: str, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.controllers.keyboard import KeyboardController

    sender, clock = RecordingSender(), FakeClock()
    before = set(threading.enumerate())
    controller = KeyboardController(KeyboardConfig(), always, hold=5.0, sender=sender, clock=clock)
    clock.settle(waiters=1)
    # Its pulse thread is a daemon: a program that ends without close() is not kept alive
    # (the atexit hook lets go of the keys then).
    started = set(threading.enumerate()) - before
    assert started and all(thread.daemon for thread in started), started
    controller.set(FULL_THROTTLE)
    clock.settle()
    assert controller.held == {key("w")}
    sender.failing = True
    with caplog.at_level(logging.WARNING, logger="agent.controllers.keyboard"):
        controller.close()
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.WARNING,
        "keyboard controller could not release 'w': the game's window is gone",
    )
    # The display is still there: unexpected, so with its traceback.
    assert record.exc_info and isinstance(record.exc_info[1], OSError)
    assert controller.held == {key("w")}  # still down as far as anyone knows: kept
    sender.failing = False
    controller.neutral()  # a later try lets go
    assert controller.held == frozenset() and sender.sent[-1] == ("release", key("w"))


def test_keyboard_lets_go_the_moment_the_hold_is_up(x_display: str) -> None:
    """On a clock whose steps are exact in binary: a command is live for `hold` seconds and
    gone at `hold`, not one focus poll later."""
    from agent.controllers.keyboard import KeyboardController

    sender, clock = RecordingSender(), FakeClock(start=0.0)
    controller = KeyboardController(
        KeyboardConfig(pulse_period=0.25), always, hold=0.5, focus_poll=0.125, sender=sender,
        clock=clock,
    )  # fmt: skip
    clock.settle(waiters=1)
    try:
        controller.set(FULL_THROTTLE)
        clock.advance(0.375)
        assert controller.held == {key("w")} and controller.releases == 0
        clock.advance(0.125)
        assert controller.held == frozenset() and controller.releases == 1
    finally:
        controller.close()
