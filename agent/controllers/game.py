"""The bundled game's virtual gamepad (a loopback UDP channel the game polls every tick)."""

from __future__ import annotations

from agent.controllers.base import DeviceController
from agent.controllers.deadman import DEFAULT_HOLD
from agent.game.channel import GamepadSender
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.types import ControllerState

REPEAT_PERIOD = 0.1
"""Seconds between repeats of the applied state: well inside the game's 0.5 s silent-pad timeout.
A real pad holds its state until changed, and a slow model (model_0005 on a CPU: one prediction
every ~0.5 s) must not look like a silent pad between predictions."""


class GameController(DeviceController):
    """Sends each state, with its tag, to the bundled game listening on `port` (127.0.0.1, UDP).

    Sending never blocks and never fails while the game is starting or gone. The applied state is
    sent again every `REPEAT_PERIOD` until it is `hold` seconds old; then the dead-man sends
    neutral and the pad falls silent, so even a hung agent cannot leave the throttle down (and a
    killed one is read as neutral by the game 0.5 s after its last packet).
    """

    name = "game"
    repeat_every = REPEAT_PERIOD

    def __init__(self, port: int, hold: float = DEFAULT_HOLD, clock: Clock = SYSTEM_CLOCK) -> None:
        self._sender = GamepadSender(port)
        super().__init__(hold, clock)

    def _write(self, state: ControllerState, tag: int) -> None:
        self._sender.send(state, tag)

    def _release(self) -> None:
        self._sender.close()
