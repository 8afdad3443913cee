"""The bundled game's virtual gamepad: a loopback UDP channel the game polls every tick.

No OS-level virtual gamepad exists on Linux without /dev/uinput, so the game exposes its own,
the way a game polls a controller: the agent sends the full pad state (never events), the game
reads the newest state each tick. A pad that has gone quiet for `timeout` seconds reads as
neutral, so a crashed agent can never leave the throttle down.

Packet: little-endian magic b"CHGP", uint32 sequence, float32 steering [-1, 1],
float32 accelerate [0, 1], float32 brake [0, 1].
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import time
from dataclasses import astuple

from agent.types import NEUTRAL, ControllerState, clamp_state

DEFAULT_PORT = 47800
HOST = "127.0.0.1"
_PACKET = struct.Struct("<4sIfff")
_MAGIC = b"CHGP"


class GamepadSender:
    """The agent's end: sends pad states to the game on `port`."""

    def __init__(self, port: int = DEFAULT_PORT) -> None:
        self._address = (HOST, port)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._seq = 0

    def send(self, state: ControllerState) -> None:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        packet = _PACKET.pack(_MAGIC, self._seq, *astuple(clamp_state(state)))
        # Nobody listening yet (game starting) or any more (game gone): the next tick sends again.
        with contextlib.suppress(OSError):
            self._socket.sendto(packet, self._address)

    def close(self) -> None:
        self._socket.close()


class GamepadReceiver:
    """The game's end: `poll()` returns the newest pad state, neutral when silent."""

    def __init__(self, port: int = DEFAULT_PORT, timeout: float = 0.5) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._socket.bind((HOST, port))
        except OSError as error:
            self._socket.close()
            raise OSError(
                f"gamepad channel port {port} is busy ({error}); is another game open?"
            ) from None
        self._socket.setblocking(False)
        self._timeout = timeout
        self._state = NEUTRAL
        self._received_at = -math.inf

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    def poll(self) -> ControllerState:
        while True:
            try:
                packet = self._socket.recv(64)
            except BlockingIOError:
                break
            if len(packet) == _PACKET.size:
                magic, _seq, steering, accelerate, brake = _PACKET.unpack(packet)
                if magic == _MAGIC:
                    self._state = clamp_state(ControllerState(steering, accelerate, brake))
                    self._received_at = time.monotonic()
        if time.monotonic() - self._received_at > self._timeout:
            return NEUTRAL
        return self._state

    def close(self) -> None:
        self._socket.close()
