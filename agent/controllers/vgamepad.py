"""Virtual Xbox 360 controller (Windows, vgamepad on the ViGEmBus driver): for XInput games.

Left stick X is steering (signed 16-bit, -32768 full left .. 32767 full right), the right
trigger accelerates and the left trigger brakes (0..255), as in most racing games' default
XInput layout. The left stick's Y axis stays centred.
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

STICK_MIN = -32768
STICK_MAX = 32767
TRIGGER_MAX = 255

INSTALL_HINT = (
    "install the ViGEmBus driver (https://github.com/nefarius/ViGEmBus/releases), "
    "then run: pip install vgamepad"
)


class XInputPad(Protocol):
    """The part of `vgamepad.VX360Gamepad` this backend uses."""

    def left_joystick(self, x_value: int, y_value: int) -> None: ...
    def right_trigger(self, value: int) -> None: ...
    def left_trigger(self, value: int) -> None: ...
    def update(self) -> None: ...


def stick_value(steering: float) -> int:
    """Stick X in [-1, 1] as a signed 16-bit value; both ends are reached exactly."""
    return round(steering * (-STICK_MIN if steering < 0.0 else STICK_MAX))


def trigger_value(pedal: float) -> int:
    """A pedal in [0, 1] as a trigger value 0..255."""
    return round(pedal * TRIGGER_MAX)


def open_x360_pad() -> XInputPad:
    """`vgamepad.VX360Gamepad()`, or a DependencyError saying how to install ViGEmBus."""
    # Not only ImportError: with the package but not its DLL (or off Windows) the import fails
    # with OSError or AttributeError (ctypes.WinDLL), and all of them mean "driver missing".
    try:
        import vgamepad
    except Exception as error:
        raise DependencyError(
            f"vgamepad backend needs vgamepad and ViGEmBus ({error}); {INSTALL_HINT}"
        ) from None
    try:
        return vgamepad.VX360Gamepad()
    except Exception as error:  # vgamepad reports a missing bus with AssertionError
        raise DependencyError(
            f"virtual Xbox 360 pad cannot be connected ({type(error).__name__}: {error}); "
            f"{INSTALL_HINT}"
        ) from None


class VGamepadController(DeviceController):
    """Drives a virtual Xbox 360 pad. `pad` replaces the real one (tests)."""

    name = "vgamepad"

    def __init__(
        self,
        *,
        pad: XInputPad | None = None,
        hold: float = DEFAULT_HOLD,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._pad = pad if pad is not None else open_x360_pad()
        super().__init__(hold, clock)
        logger.info("virtual Xbox 360 pad connected")

    def _write(self, state: ControllerState, tag: int) -> None:
        # vgamepad only changes its report in memory; update() sends all three at once, so the
        # game never sees a half-written state.
        self._pad.left_joystick(x_value=stick_value(state.steering), y_value=0)
        self._pad.right_trigger(value=trigger_value(state.accelerate))
        self._pad.left_trigger(value=trigger_value(state.brake))
        self._pad.update()

    def _release(self) -> None:
        # vgamepad unplugs the pad when the object is collected.
        del self._pad
