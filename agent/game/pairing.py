"""Pairing captured frames with the bundled game's frame records.

The game sends a record for every picture it shows (`agent.game.channel.FrameRecord`), stamped
with the monotonic time the picture went to the display. A grab at time t shows the newest
picture shown before t, so that record holds the command in effect when the grabbed picture
was rendered. Both clocks are this machine's CLOCK_MONOTONIC (the game runs on the same
machine; the gamepad channel is loopback-only).
"""

from __future__ import annotations

import bisect
import contextlib
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.game.channel import HOST, FrameRecord, subscribe_packet

RENEW_SECONDS = 1.0
KEPT_RECORDS = 600
"""About 20 s of records at 30 frames a second: far more than any capture lag."""
MAX_AGE_SECONDS = 0.25
"""A grab with no record shown within this long before it is left unpaired (game stalled)."""


class FrameRecordListener:
    """Subscribes to the game's frame records on `port` and keeps the recent ones.

    `on_record`, when given, is called on the listener's thread with each record kept, after it
    is kept (so `record_for` and `newest` already see it); it must be quick, as records queue
    up behind it.
    """

    def __init__(self, port: int, on_record: Callable[[FrameRecord], None] | None = None) -> None:
        self._game = (HOST, port)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((HOST, 0))
        self._socket.settimeout(0.2)
        self._records: deque[FrameRecord] = deque(maxlen=KEPT_RECORDS)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._nonce = secrets.randbits(32)
        self.paired = 0
        self._on_record = on_record
        self._thread = threading.Thread(target=self._run, name="frame-records", daemon=True)
        self._thread.start()

    def __enter__(self) -> FrameRecordListener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        renew_at = 0.0
        while not self._closed.is_set():
            now = time.monotonic()
            if now >= renew_at:
                with contextlib.suppress(OSError):
                    self._socket.sendto(subscribe_packet(self._nonce), self._game)
                renew_at = now + RENEW_SECONDS
            try:
                packet, sender = self._socket.recvfrom(256)
            except (TimeoutError, OSError):
                continue
            if sender != self._game:
                continue  # only the game we subscribed to labels frames
            record = FrameRecord.unpack(packet)
            if record is None:
                continue
            with self._lock:
                # Times only grow (one game, one clock); anything else is not its record.
                kept = not self._records or record.shown_at > self._records[-1].shown_at
                if kept:
                    self._records.append(record)
            if kept and self._on_record is not None:
                self._on_record(record)

    def newest(self) -> FrameRecord | None:
        """The record of the last picture the game showed; None before the first."""
        with self._lock:
            return self._records[-1] if self._records else None

    def record_for(self, captured_at: float) -> FrameRecord | None:
        """The record of the picture on screen at `captured_at`, None when there is none."""
        with self._lock:
            records = list(self._records)
        times = [record.shown_at for record in records]
        index = bisect.bisect_right(times, captured_at) - 1
        if index < 0 or captured_at - times[index] > MAX_AGE_SECONDS:
            return None
        self.paired += 1
        return records[index]

    def describe(self, unpaired: int) -> str:
        return (
            f"{self.paired} frames paired by display time, {unpaired} left unpaired "
            "(charles bench pairing measures how often the pair is the right frame)"
        )

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=1.0)
        self._socket.close()
