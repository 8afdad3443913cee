"""vJoy virtual joystick (Windows, pyvjoy): for games that take DirectInput joysticks.

Axes (HID usages, the same numbers as pyvjoy.HID_USAGE_*):
- X: steering, 0x1 (full left) .. 0x4000 (centre) .. 0x8000 (full right);
- Z: accelerate, 0x1 (released) .. 0x8000 (floored);
- RZ: brake, 0x1 (released) .. 0x8000 (floored).
Pedals are two separate axes rather than one combined axis so that a game (or x360ce) can bind
them to two triggers and both can be read at once; bind Z and RZ in the game's controls.
"""

from __future__ import annotations

import logging
from typing import Protocol

from agent.controllers.base import DeviceController
from agent.controllers.deadman import DEFAULT_HOLD
from agent.errors import DependencyError
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.types import ControllerState

logger = logging.getLogger(__name__)

AXIS_MIN = 0x1
AXIS_MAX = 0x8000
AXIS_CENTRE = 0x4000
HID_USAGE_X = 0x30
HID_USAGE_Z = 0x32
HID_USAGE_RZ = 0x35

INSTALL_HINT = (
    "install the vJoy driver, enable device {device} with axes X, Z and RZ in 'Configure vJoy', "
    "then run: pip install pyvjoy"
)


class VJoyDevice(Protocol):
    """The part of `pyvjoy.VJoyDevice` this backend uses."""

    def set_axis(self, axis_id: int, value: int) -> None: ...


def steering_axis(steering: float) -> int:
    """Stick X in [-1, 1] as a vJoy axis value; both halves reach their end exactly."""
    if steering < 0.0:
        return round(AXIS_CENTRE + steering * (AXIS_CENTRE - AXIS_MIN))
    return round(AXIS_CENTRE + steering * (AXIS_MAX - AXIS_CENTRE))


def pedal_axis(pedal: float) -> int:
    """A pedal in [0, 1] as a vJoy axis value (released = AXIS_MIN)."""
    return round(AXIS_MIN + pedal * (AXIS_MAX - AXIS_MIN))


def vjoy_axes(state: ControllerState) -> tuple[tuple[int, int], ...]:
    """(HID usage, value) pairs for a clamped state, in the order they are sent."""
    return (
        (HID_USAGE_X, steering_axis(state.steering)),
        (HID_USAGE_Z, pedal_axis(state.accelerate)),
        (HID_USAGE_RZ, pedal_axis(state.brake)),
    )


def open_vjoy_device(device: int) -> VJoyDevice:
    """`pyvjoy.VJoyDevice(device)`, or a DependencyError saying how to install vJoy."""
    hint = INSTALL_HINT.format(device=device)
    # Not only ImportError: with the package but not its DLL (or off Windows) the import fails
    # with OSError or AttributeError (ctypes.WinDLL), and all of them mean "driver missing".
    try:
        import pyvjoy
    except Exception as error:
        raise DependencyError(
            f"vJoy backend needs pyvjoy and the vJoy driver ({error}); {hint}"
        ) from None
    try:
        return pyvjoy.VJoyDevice(device)
    except Exception as error:  # pyvjoy raises its own vJoyException family and OSError
        raise DependencyError(
            f"vJoy device {device} cannot be acquired ({type(error).__name__}: {error}); {hint}"
        ) from None


class VJoyController(DeviceController):
    """Drives vJoy device `device` (1..16). `vjoy` replaces the real device (tests)."""

    name = "vjoy"

    def __init__(
        self,
        device: int = 1,
        *,
        vjoy: VJoyDevice | None = None,
        hold: float = DEFAULT_HOLD,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.device = device
        self._vjoy = vjoy if vjoy is not None else open_vjoy_device(device)
        super().__init__(hold, clock)
        logger.info("vJoy device %d acquired", device)

    def _write(self, state: ControllerState, tag: int) -> None:
        for axis, value in vjoy_axes(state):
            self._vjoy.set_axis(axis, value)
