"""The bundled game's virtual gamepad (a loopback UDP channel the game polls every tick)."""

from __future__ import annotations

from agent.controllers.base import DeviceController
from agent.game.channel import GamepadSender
from agent.types import ControllerState


class GameController(DeviceController):
    """Sends each state to the bundled game listening on `port` (127.0.0.1, UDP).

    Sending never blocks and never fails while the game is starting or gone; the game reads a
    silent pad as neutral, so even a crashed agent cannot leave the throttle down.
    """

    name = "game"

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self._sender = GamepadSender(port)

    def _write(self, state: ControllerState) -> None:
        self._sender.send(state)

    def _release(self) -> None:
        self._sender.close()
