"""Video files: H.264 in fragmented MP4 through PyAV, written on a thread behind a bounded queue.

Why fragmented MP4: a plain MP4 keeps its index (the moov box) at the end, so a process killed
mid-recording leaves an unplayable file. A fragmented one writes a small header first and then
self-contained fragments, one per keyframe. With a keyframe every half second, every fragment
flushed to the OS, and at most `QUEUE_SECONDS` of pictures waiting for the encoder, kill -9
loses at most the last `QUEUE_SECONDS` + `KEYFRAME_SECONDS` of video; the rest plays. Browsers
play fragmented MP4 with H.264 (yuv420p) as they play any MP4.

Why a thread and a bounded queue: an encoder or a disk that falls behind must never make
capture or inference wait. `VideoWriter.offer` never blocks; when the queue is full the
picture is dropped and counted. Each picture carries its slot on the video clock (`index`):
the file's timestamps stay true even when pictures are dropped (a player shows the previous
picture longer).
"""

from __future__ import annotations

import contextlib
import fractions
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.errors import CharlesError, DependencyError
from agent.threads import lower_this_threads_priority

log = logging.getLogger(__name__)

KEYFRAME_SECONDS = 0.5
"""Seconds between keyframes, so between fragments: the most a crash loses from the encoder."""
QUEUE_SECONDS = 1.0
"""Pictures that may wait for the encoder, in seconds of video: the rest of a crash's loss."""
ENCODERS = ("auto", "libx264", "h264_nvenc")
"""record.encoder: "auto" uses NVENC when this machine's GPU and driver can open it."""
FRAGMENTED_MP4 = "frag_keyframe+empty_moov+default_base_moof"

_ENCODER_OPTIONS = {
    # ultrafast + zerolatency: about 2-4 ms a 1280x720 frame on one core here, and no frames
    # held back for lookahead or B-frames (held frames are what a crash would lose).
    "libx264": {"preset": "ultrafast", "tune": "zerolatency"},
    # p1 is NVENC's fastest preset; "ull" its ultra-low-latency tuning (no held frames).
    "h264_nvenc": {"preset": "p1", "tune": "ull", "zerolatency": "1"},
}


class RecordingError(CharlesError):
    """A video file cannot be written (no PyAV, no encoder, an unwritable folder)."""


def require_av() -> Any:
    try:
        import av
    except ImportError:
        raise DependencyError(
            "PyAV is not installed (recording needs it): pip install av, or run scripts/setup"
        ) from None
    return av


_nvenc_usable: bool | None = None


def choose_encoder(requested: str) -> str:
    """The codec name to encode with: `requested`, or for "auto" NVENC when it opens here
    (a GPU, its driver and an FFmpeg with NVENC), else libx264."""
    if requested != "auto":
        return requested
    global _nvenc_usable
    if _nvenc_usable is None:
        _nvenc_usable = encoder_opens("h264_nvenc")
    return "h264_nvenc" if _nvenc_usable else "libx264"


def encoder_opens(codec: str) -> bool:
    """Whether `codec` opens on this machine (NVENC's libraries load only with a GPU driver)."""
    av = require_av()
    try:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = fractions.Fraction(1, 30)
        context.open()
    except Exception as error:  # av.FFmpegError, or ValueError for an unknown codec
        log.debug("encoder %s does not open here: %s", codec, error)
        return False
    return True


def even_size(width: int, height: int) -> tuple[int, int]:
    """H.264 in yuv420p needs even sides: the size rounded down to even numbers."""
    return width - width % 2, height - height % 2


class VideoFile:
    """One H.264 fragmented-MP4 file, written synchronously (see VideoWriter for the thread)."""

    def __init__(self, path: Path, width: int, height: int, fps: int, encoder: str) -> None:
        av = require_av()
        if (width, height) != even_size(width, height) or width < 2 or height < 2:
            raise ValueError(f"a video needs even sides of at least 2, not {width}x{height}")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.encoder = choose_encoder(encoder)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(
                str(self.path), "w", format="mp4",
                options={"movflags": FRAGMENTED_MP4},
                # Hand every written fragment to the OS at once: kill -9 cannot lose it then.
                container_options={"flush_packets": "1"},
            )  # fmt: skip
        except (OSError, av.FFmpegError) as error:
            raise RecordingError(
                f"cannot write the video {self.path}: {error}; set record.folder (or "
                "--record PATH) to a folder this user can write"
            ) from None
        keyframe_every = max(1, round(fps * KEYFRAME_SECONDS))
        options = {**_ENCODER_OPTIONS[self.encoder], "g": str(keyframe_every)}
        try:
            stream = self._container.add_stream(self.encoder, rate=fps, options=options)
        except Exception as error:
            self._container.close()
            raise RecordingError(
                f"the video encoder {self.encoder} is not available here ({error}); set "
                'record.encoder = "libx264"'
            ) from None
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = fractions.Fraction(1, fps)
        stream.codec_context.thread_count = 1  # one core: the model needs the others
        self._stream = stream
        self._av = av
        self.pictures = 0

    def write(self, picture_bgr: np.ndarray, index: int) -> None:
        """Encode one BGR picture of the file's size at slot `index` of the video clock."""
        yuv = cv2.cvtColor(picture_bgr, cv2.COLOR_BGR2YUV_I420)  # ~2x faster than swscale here
        frame = self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = index
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.pictures += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (it already plays before this)."""
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()


@dataclass
class WriterCounts:
    offered: int = 0
    written: int = 0
    dropped: int = 0
    """Pictures refused because the queue was full (the encoder or disk fell behind)."""
    cpu_seconds: float = 0.0
    """CPU time the writer thread used (converting and encoding)."""


_CLOSE = object()


class VideoWriter:
    """A VideoFile on its own thread; `offer` never blocks.

    `open_file` is called on the writer thread with (width, height) of the first picture, so
    opening the encoder (NVENC probing can take a second) never delays the caller either.
    """

    def __init__(
        self,
        path: Path,
        fps: int,
        encoder: str = "auto",
        queue_size: int | None = None,
        nice: int = 0,
    ) -> None:
        self.path = Path(path)
        self.fps = fps
        self._encoder = encoder
        self._nice = nice
        size = queue_size if queue_size is not None else max(1, round(fps * QUEUE_SECONDS))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.counts = WriterCounts()
        self.error: BaseException | None = None
        self.encoder_used: str | None = None
        self._thread = threading.Thread(target=self._run, name="video-writer", daemon=True)
        self._thread.start()

    def offer(self, picture_bgr: np.ndarray, index: int) -> bool:
        """Queue a picture for slot `index`; False (and counted) when the queue is full."""
        self.counts.offered += 1
        try:
            self._queue.put_nowait((picture_bgr, index))
        except queue.Full:
            self.counts.dropped += 1
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, finish the file and end the thread."""
        while self._thread.is_alive():
            try:
                self._queue.put(_CLOSE, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the video writer did not finish %s within %.0f s", self.path, timeout)

    def _run(self) -> None:
        lower_this_threads_priority(self._nice)
        cpu_start = time.thread_time()
        file: VideoFile | None = None
        try:
            while True:
                item = self._queue.get()
                if item is _CLOSE:
                    break
                picture, index = item
                if file is None:
                    height, width = picture.shape[:2]
                    file = VideoFile(self.path, width, height, self.fps, self._encoder)
                    self.encoder_used = file.encoder
                file.write(picture, index)
                self.counts.written += 1
        except BaseException as error:
            self.error = error
            log.error("recording to %s stopped: %s", self.path, error)
            # Keep taking pictures so offer() goes on dropping them instead of filling up.
            while self._queue.get() is not _CLOSE:
                self.counts.dropped += 1
        finally:
            if file is not None:
                with contextlib.suppress(Exception):
                    file.close()
            self.counts.cpu_seconds = time.thread_time() - cpu_start
