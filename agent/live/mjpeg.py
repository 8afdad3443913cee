"""One kind of picture as JPEG for every viewer: encoded once, sent newest-first.

A `JpegChannel` belongs to the server's event loop. While at least one viewer streams its
kind, it takes each newer picture from the `PictureFeed` and encodes it once (in a worker
thread: cv2 releases the GIL, so neither the event loop nor the drive loop waits for it), as
one ready-to-send part of a multipart/x-mixed-replace stream. Every viewer sends the newest
part when its connection has taken the one before: a viewer that reads slowly, or not at all,
skips parts (counted), holds at most one part in its send buffer, and holds up nobody else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

import cv2

from agent.errors import log_failure
from agent.live.newest import NewestValue
from agent.record.pictures import Picture, PictureFeed

log = logging.getLogger(__name__)

BOUNDARY = "charles-picture"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
INDEX_HEADER = "X-Picture-Index"
"""Part header with the picture's video clock index (agent.record.pictures.Picture.index)."""
PICTURE_WAIT = 0.2
"""Seconds a worker waits for a newer picture before the channel looks whether anyone still
watches (and the most a stopping server waits for that worker)."""


def encode_part(picture: Picture, quality: int) -> bytes:
    """`picture` as one part of the multipart stream: boundary, headers, JPEG, CRLF.

    `quality` is JPEG quality in [10, 100]."""
    ok, jpeg = cv2.imencode(".jpg", picture.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {picture.image.shape} picture as JPEG")
    data = jpeg.tobytes()
    head = (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
        f"{INDEX_HEADER}: {picture.index}\r\n\r\n"
    )
    return b"".join((head.encode("ascii"), data, b"\r\n"))


class JpegChannel:
    """The newest picture of one feed as a multipart part, while anyone views it."""

    def __init__(self, feed: PictureFeed, quality: int, workers: Executor) -> None:
        self.feed = feed
        self._quality = quality
        self._workers = workers
        self.parts: NewestValue[bytes] = NewestValue()
        self.encoded = 0
        """Pictures encoded so far (once each, however many viewers)."""
        self._viewers = 0
        self._encoded_seq = 0
        """The feed's sequence number of the newest picture encoded."""
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def viewing(self) -> Iterator[NewestValue[bytes]]:
        """One viewer streams while the block runs: the feed is watched (so the drawing thread
        draws this kind) and its pictures are encoded. Call it on the event loop."""
        with self.feed.watch():
            self._viewers += 1
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._encode_while_viewed())
            try:
                yield self.parts
            finally:
                self._viewers -= 1

    async def close(self) -> None:
        """End every viewer's wait and the encoding (the server is stopping)."""
        self.parts.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _encode_while_viewed(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._viewers > 0:
                part, seq = await loop.run_in_executor(
                    self._workers, self._encode_newer, self._encoded_seq
                )
                if part is not None:
                    self._encoded_seq = seq
                    self.encoded += 1
                    self.parts.put(part)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug: end the viewers' streams rather than freeze them
            log_failure(log, f"the live view's {self.feed.name} pictures stopped", error)
            self.parts.close()

    def _encode_newer(self, seen: int) -> tuple[bytes | None, int]:
        """In a worker thread: the next picture newer than `seen`, encoded, with its sequence
        number; (None, seen) when none came within PICTURE_WAIT."""
        picture, seq = self.feed.wait_newer(seen, PICTURE_WAIT)
        if picture is None or seq <= seen:
            return None, seen
        return encode_part(picture, self._quality), seq
