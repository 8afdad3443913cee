"""The bundled game's virtual gamepad (a loopback UDP channel the game polls every tick)."""

from __future__ import annotations

import threading
import time

from agent.controllers.base import DeviceController
from agent.game.channel import GamepadSender
from agent.types import NEUTRAL, ControllerState

REPEAT_PERIOD = 0.1
"""Seconds between repeats of the held state: well inside the game's 0.5 s silent-pad timeout."""

HOLD_SECONDS = 2.0
"""How long the last state is repeated after the last `set()`. A real pad holds its state until
changed, and a slow model (model_0005 on a CPU: one prediction every ~0.5 s) must not look like a
silent pad between predictions; but an agent that stalls for longer lets the car go neutral."""


class GameController(DeviceController):
    """Sends each state to the bundled game listening on `port` (127.0.0.1, UDP).

    Sending never blocks and never fails while the game is starting or gone. A background thread
    repeats the newest non-neutral state every `REPEAT_PERIOD` for up to `hold` seconds after
    the last `set()`; after that the pad falls silent and the game reads it as neutral, so even a
    hung or crashed agent cannot leave the throttle down.
    """

    name = "game"

    def __init__(self, port: int, hold: float = HOLD_SECONDS) -> None:
        super().__init__()
        self.port = port
        self._sender = GamepadSender(port)
        self._hold = hold
        self._last = NEUTRAL
        self._set_at = time.monotonic()
        self._stop = threading.Event()
        self._repeater = threading.Thread(target=self._repeat, name="gamepad-repeat", daemon=True)
        self._repeater.start()

    def _write(self, state: ControllerState) -> None:
        self._sender.send(state)
        self._last = state
        self._set_at = time.monotonic()

    def _release(self) -> None:
        # Called with the device lock held: only signal the repeater (it checks `closed` under the
        # same lock before every send), never join it here.
        self._stop.set()
        self._sender.close()

    def _repeat(self) -> None:
        while not self._stop.wait(REPEAT_PERIOD):
            with self._lock:
                fresh = time.monotonic() - self._set_at < self._hold
                if not self.closed and self._last != NEUTRAL and fresh:
                    self._sender.send(self._last)
