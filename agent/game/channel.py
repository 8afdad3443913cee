"""The bundled game's virtual gamepad: a loopback UDP channel the game polls every tick.

No OS-level virtual gamepad exists on Linux without /dev/uinput, so the game exposes its own,
the way a game polls a controller: the agent sends the full pad state (never events), the game
reads the newest state each tick. A pad that has gone quiet for `timeout` seconds reads as
neutral, so a crashed agent can never leave the throttle down.

Packet: little-endian magic b"CHGP", uint32 sequence, float32 steering [-1, 1],
float32 accelerate [0, 1], float32 brake [0, 1], uint32 tag (24 bytes). The tag names the
captured frame the state was computed from (the agent's capture sequence number; 0: untagged,
such as neutral, or a sender that is not an agent), so the game can say when its physics first
applied that command (`GamepadReceiver.tag_since`). A 20-byte packet without the tag (an older
sender) is read as untagged.

The same port answers "who are you?" (b"CHWH", uint32 nonce) with b"CHIS", the nonce, the game's
process id and the process id of the `charles drive` that started it (0 when a person did). That
is how an agent finds *this* game's window among windows with lookalike titles, and tells a game
it may drive from one that another (or a dead) agent started.

A reset request (b"CHRS", uint32 nonce; `request_reset`) asks the game to put the car back on
the track, at rest, in the same episode. Nothing answers it; a paused game ignores it.

A collector can also subscribe (b"CHSB", uint32 nonce, renewed every second): the game then sends
it one frame record (b"CHFR") for each picture it shows: the frame number, the episode, the
monotonic time the picture was shown, the input in effect when it was rendered, what the
autopilot would have done (NaN when it is off or the game is paused), the car's speed, a flags
byte (bit 0: the game was paused, so the picture is a still and the input did nothing), and the
tag of the pad command physics was applying with the monotonic time physics first applied it
(tag 0 when the pad was not what drove). That pairs a captured frame with the command of the
moment the game drew it, not the later moment it was captured, and times a command from the
picture it was computed from to the physics (`agent.drive.latency`). Record packet, little-endian:
magic, uint32 frame, uint32 episode, float64 shown_at, float32 x3 applied, float32 x3 autopilot,
float32 speed, uint8 flags, uint32 tag, float64 tag_since (61 bytes). A 49-byte record without
the last two (an older game) is read as untagged.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import select
import socket
import struct
import time
from dataclasses import astuple, dataclass

from agent.types import NEUTRAL, ControllerState, clamp_state

DEFAULT_PORT = 47800
HOST = "127.0.0.1"
_UNTAGGED_PACKET = struct.Struct("<4sIfff")
_PACKET_TAG = struct.Struct("<I")
_PACKET_SIZE = _UNTAGGED_PACKET.size + _PACKET_TAG.size
_MAGIC = b"CHGP"
_WHO = struct.Struct("<4sI")
_WHO_MAGIC = b"CHWH"
_IDENTITY = struct.Struct("<4sIII")
_IDENTITY_MAGIC = b"CHIS"
_SUBSCRIBE_MAGIC = b"CHSB"
_RESET_MAGIC = b"CHRS"
_UNTAGGED_FRAME = struct.Struct("<4sIIdfffffffB")
_FRAME_TAG = struct.Struct("<Id")
_FRAME_SIZE = _UNTAGGED_FRAME.size + _FRAME_TAG.size
_FRAME_MAGIC = b"CHFR"
_PAUSED_FLAG = 0x01
SUBSCRIPTION_SECONDS = 5.0
"""A subscriber that has not renewed for this long gets no more frame records."""


@dataclass(frozen=True)
class FrameRecord:
    """What the game knew when it showed one picture (see the module docstring)."""

    frame: int
    episode: int
    shown_at: float
    """time.monotonic() right after the picture went to the display (same clock as captures)."""
    applied: ControllerState
    autopilot: ControllerState | None
    speed: float
    paused: bool = False
    """The game was paused: the picture is a still and `applied` moved nothing."""
    tag: int = 0
    """The tag of the pad command physics applied in the last tick before the picture; 0 when
    untagged, or when the keys, the autopilot or a pause drove instead of the pad."""
    tag_since: float = math.nan
    """time.monotonic() of the physics tick that first applied `tag`; NaN when unknown."""

    def pack(self) -> bytes:
        suggestion = self.autopilot or ControllerState(math.nan, math.nan, math.nan)
        flags = _PAUSED_FLAG if self.paused else 0
        return _UNTAGGED_FRAME.pack(
            _FRAME_MAGIC, self.frame & 0xFFFFFFFF, self.episode & 0xFFFFFFFF, self.shown_at,
            *astuple(self.applied), *astuple(suggestion), self.speed, flags,
        ) + _FRAME_TAG.pack(self.tag & 0xFFFFFFFF, self.tag_since)  # fmt: skip

    @classmethod
    def unpack(cls, packet: bytes) -> FrameRecord | None:
        if len(packet) == _FRAME_SIZE:
            tag, tag_since = _FRAME_TAG.unpack_from(packet, _UNTAGGED_FRAME.size)
        elif len(packet) == _UNTAGGED_FRAME.size:  # from a game older than tags
            tag, tag_since = 0, math.nan
        else:
            return None
        magic, frame, episode, shown_at, *values, flags = _UNTAGGED_FRAME.unpack_from(packet)
        if magic != _FRAME_MAGIC or not all(math.isfinite(v) for v in (shown_at, *values[:3])):
            return None
        speed = values[6] if math.isfinite(values[6]) else math.nan
        suggestion = ControllerState(*values[3:6])
        known = all(math.isfinite(v) for v in values[3:6])
        return cls(
            frame, episode, shown_at, clamp_state(ControllerState(*values[:3])),
            clamp_state(suggestion) if known else None, speed, bool(flags & _PAUSED_FLAG),
            tag, tag_since if math.isfinite(tag_since) else math.nan,
        )  # fmt: skip


def _read_tag(packet: bytes) -> int:
    """The tag of a pad packet; 0 for one from a sender older than tags."""
    if len(packet) < _PACKET_SIZE:
        return 0
    return _PACKET_TAG.unpack_from(packet, _UNTAGGED_PACKET.size)[0]


def subscribe_packet(nonce: int) -> bytes:
    return _WHO.pack(_SUBSCRIBE_MAGIC, nonce & 0xFFFFFFFF)


def free_udp_port() -> int:
    """A loopback UDP port free this instant, for a game of its own (the benchmarks and the
    tests run several games side by side, each on its own channel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request_reset(port: int) -> None:
    """Ask the game on `port` to put the car back on the track; sent once, never answered.

    Loopback UDP is not lost under normal load; a caller that must know whether it worked reads
    the game's telemetry (`resets`).
    """
    packet = _WHO.pack(_RESET_MAGIC, secrets.randbits(32))
    # Nobody listening (no game, or it is gone): there is no car to put back.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender, contextlib.suppress(OSError):
        sender.sendto(packet, (HOST, port))


@dataclass(frozen=True)
class GameIdentity:
    """Who is listening on a gamepad port: the game's process id and its owner's (0: none)."""

    pid: int
    owner_pid: int = 0


def ask_identity(port: int, timeout: float = 0.5) -> GameIdentity | None:
    """The identity of the game listening on `port`, or None when no game answers in time."""
    nonce = secrets.randbits(32)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        # Connected, so that "nobody listens" comes back at once as ConnectionRefusedError.
        probe.connect((HOST, port))
        deadline = time.monotonic() + timeout
        try:
            probe.send(_WHO.pack(_WHO_MAGIC, nonce))
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([probe], [], [], left)
                if not ready:
                    break
                reply = probe.recv(64)
                if len(reply) != _IDENTITY.size:
                    continue
                magic, echoed, pid, owner = _IDENTITY.unpack(reply)
                if magic == _IDENTITY_MAGIC and echoed == nonce:
                    return GameIdentity(pid, owner)
        except OSError:  # refused: no game on that port
            return None
    return None


class GamepadSender:
    """The agent's end: sends pad states to the game on `port`."""

    def __init__(self, port: int = DEFAULT_PORT) -> None:
        self._address = (HOST, port)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._seq = 0

    def send(self, state: ControllerState, tag: int = 0) -> None:
        """Send `state`, computed from the captured frame `tag` (0: untagged)."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        packet = _UNTAGGED_PACKET.pack(_MAGIC, self._seq, *astuple(clamp_state(state)))
        packet += _PACKET_TAG.pack(tag & 0xFFFFFFFF)
        # Nobody listening yet (game starting) or any more (game gone): the next tick sends again.
        with contextlib.suppress(OSError):
            self._socket.sendto(packet, self._address)

    def close(self) -> None:
        self._socket.close()


class GamepadReceiver:
    """The game's end: `poll()` returns the newest pad state, neutral when silent.

    Each poll also settles the tag in effect (`tag`; 0 when silent) and `tag_since`, the
    monotonic time of the first poll that returned it: the repeats of a command keep its time,
    so it says when the game first read that command, not when it last heard of it.

    Reset requests received while polling are counted; `take_reset_requests` hands them over.
    """

    def __init__(self, port: int = DEFAULT_PORT, timeout: float = 0.5, owner_pid: int = 0) -> None:
        self._identity = _IDENTITY_MAGIC, os.getpid(), owner_pid
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
        self._received_tag = 0
        self._received_at = -math.inf
        self._tag = -1  # no poll yet: the first one settles a tag and its time
        self._tag_since = math.nan
        self._subscribers: dict[tuple[str, int], float] = {}
        self._reset_requests = 0

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    @property
    def tag(self) -> int:
        """The tag of the state the last `poll()` returned (0: untagged or silent)."""
        return max(self._tag, 0)

    @property
    def tag_since(self) -> float:
        """time.monotonic() of the first poll that returned `tag`; NaN before any poll."""
        return self._tag_since

    def poll(self) -> ControllerState:
        """The newest pad state (neutral when silent).

        On the way it answers identity requests and notes subscriptions and reset requests.
        """
        while True:
            try:
                packet, sender = self._socket.recvfrom(64)
            except BlockingIOError:
                break
            except ConnectionResetError:  # Windows: an earlier reply's peer had gone
                continue
            if len(packet) == _WHO.size:
                self._answer(packet, sender)
            elif len(packet) in (_UNTAGGED_PACKET.size, _PACKET_SIZE):
                magic, _seq, steering, accelerate, brake = _UNTAGGED_PACKET.unpack_from(packet)
                if magic == _MAGIC:
                    self._state = clamp_state(ControllerState(steering, accelerate, brake))
                    self._received_tag = _read_tag(packet)
                    self._received_at = time.monotonic()
        now = time.monotonic()
        silent = now - self._received_at > self._timeout
        state, tag = (NEUTRAL, 0) if silent else (self._state, self._received_tag)
        if tag != self._tag:
            self._tag, self._tag_since = tag, now
        return state

    def take_reset_requests(self) -> int:
        """Reset requests received by `poll()` since the last call."""
        count, self._reset_requests = self._reset_requests, 0
        return count

    def publish_frame(self, record: FrameRecord) -> None:
        """Send `record` to every collector that subscribed within SUBSCRIPTION_SECONDS."""
        now = time.monotonic()
        packet = record.pack()
        for address, renewed in list(self._subscribers.items()):
            if now - renewed > SUBSCRIPTION_SECONDS:
                del self._subscribers[address]
                continue
            with contextlib.suppress(OSError):
                self._socket.sendto(packet, address)

    def _answer(self, packet: bytes, sender: tuple[str, int]) -> None:
        magic, nonce = _WHO.unpack(packet)
        if magic == _SUBSCRIBE_MAGIC:
            # A handful at most: a flood of fake subscribers must not slow the game down.
            if sender in self._subscribers or len(self._subscribers) < 8:
                self._subscribers[sender] = time.monotonic()
        elif magic == _RESET_MAGIC:
            self._reset_requests += 1
        elif magic == _WHO_MAGIC:
            magic, pid, owner = self._identity
            with contextlib.suppress(OSError):
                self._socket.sendto(_IDENTITY.pack(magic, nonce, pid, owner), sender)

    def close(self) -> None:
        self._socket.close()
