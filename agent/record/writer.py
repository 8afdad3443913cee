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

Why a file object of our own (`VideoOutput`) instead of a path for FFmpeg: every video file is
created new (O_CREAT | O_EXCL | O_NOFOLLOW), so nothing is ever written through a symbolic link
or over another file, races included; and it follows the MP4's top-level boxes as the bytes go
out, so when a write fails (a full disk) the file is cut back to its last complete fragment and
plays, instead of ending in a half-written box that stops decoders.
"""

from __future__ import annotations

import contextlib
import fractions
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

import cv2
import numpy as np

from agent.config import VideoEncoder
from agent.errors import CharlesError, DependencyError, log_failure
from agent.files import CREATE_FLAGS, create_first_free
from agent.runtime.threads import lower_this_threads_priority

log = logging.getLogger(__name__)

KEYFRAME_SECONDS = 0.5
"""Seconds between keyframes, so between fragments: the most a crash loses from the encoder."""
QUEUE_SECONDS = 1.0
"""Pictures that may wait for the encoder, in seconds of video: the rest of a crash's loss."""
ENCODERS: tuple[str, ...] = get_args(VideoEncoder)
"""record.encoder's words, from the config schema."""
"""record.encoder: "auto" uses NVENC when this machine's GPU and driver can open it."""
FRAGMENTED_MP4 = "frag_keyframe+empty_moov+default_base_moof"
PLAYABLE_AFTER = frozenset({b"moov", b"mdat", b"mfra"})
"""Top-level boxes after which a fragmented MP4 plays: the header, each fragment's data (its
moof comes just before), the closing index."""

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


def refuse_link_or_special(
    path: Path, flag: str, fix: str = "give a plain file or a folder"
) -> None:
    """A path the user named that is a link, or neither a file nor a folder, is refused: the
    video would land somewhere else (another name is taken only for a plain file)."""
    if path.is_symlink():
        raise RecordingError(f"{flag} {path} is a symbolic link; {fix}")
    if path.exists() and not path.is_file() and not path.is_dir():
        raise RecordingError(f"{flag} {path} is not a regular file; {fix}")


def create_free(names: Iterable[Path]) -> VideoOutput:
    """A new video file at the first of `names` that nothing has (`agent.files`); folders are
    made. FileExistsError when every name is taken, OSError when the file cannot be created."""
    return VideoOutput(*create_first_free(names))


class VideoOutput:
    """A new file that FFmpeg writes a fragmented MP4 into, front to back, through PyAV.

    It has no `seek`, so FFmpeg writes strictly forward (for this fragmented MP4 the bytes are
    the same as into a seekable file). When a write fails, the file is cut back to its last
    complete fragment and every later write is refused: the video up to there plays.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._boxes = _TopLevelBoxes()
        self.failure: OSError | None = None
        """The write error that stopped the file, if one did."""

    @classmethod
    def create(cls, path: Path) -> VideoOutput:
        """Create `path` as a new file; FileExistsError when the name is taken, by anything: a
        file, a folder, a link (even a dangling one)."""
        return cls(path, os.open(path, CREATE_FLAGS, 0o666))

    @property
    def fragments(self) -> int:
        """Complete fragments (moof + mdat) written so far."""
        return self._boxes.fragments

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        """Write all of `data` or raise (FFmpeg does not retry the rest of a short write)."""
        if self.failure is not None or self._fd is None:
            raise self.failure or ValueError(f"{self.path} is closed")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as error:
            self.failure = error
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._boxes.playable)
            raise
        self._boxes.feed(data)
        return len(data)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class _TopLevelBoxes:
    """Where an MP4's top-level boxes end, followed as its bytes go out."""

    def __init__(self) -> None:
        self.written = 0
        self.playable = 0
        """Bytes that make a file that plays: up to the end of the last box of PLAYABLE_AFTER."""
        self.fragments = 0
        self._next = 0  # where the next box starts
        self._header = b""  # its first bytes, when a write ended inside its header
        self._kind: bytes | None = None  # the box being written, once its header was read
        self._lost = False  # a box of unknown length (size 0): no more boundaries to find

    def feed(self, data: bytes) -> None:
        start = self.written
        self.written += len(data)
        while not self._lost:
            if self._kind is not None:
                if self._next > self.written:
                    return
                if self._kind in PLAYABLE_AFTER:
                    self.playable = self._next
                    self.fragments += self._kind == b"mdat"
                self._kind = None
            if not self._read_header(data, start):
                return

    def _read_header(self, data: bytes, start: int) -> bool:
        """Read the header of the box at `_next` (size, type, 64-bit size when size is 1);
        False when it does not end in `data`."""
        while len(self._header) < (wanted := _header_size(self._header)):
            offset = self._next + len(self._header) - start
            if offset >= len(data):
                return False
            self._header += bytes(data[offset : offset + wanted - len(self._header)])
        size = int.from_bytes(self._header[:4], "big")
        if size == 1:
            size = int.from_bytes(self._header[8:16], "big")
        if size < len(self._header):  # 0: "up to the end of the file"
            self._lost = True
            return False
        self._kind, self._next, self._header = self._header[4:8], self._next + size, b""
        return True


def _header_size(header: bytes) -> int:
    return 16 if len(header) >= 8 and int.from_bytes(header[:4], "big") == 1 else 8


class VideoFile:
    """One H.264 fragmented-MP4 file, written synchronously (see VideoWriter for the thread)."""

    def __init__(
        self, output: VideoOutput, width: int, height: int, fps: int, encoder: str
    ) -> None:
        av = require_av()
        if (width, height) != even_size(width, height) or width < 2 or height < 2:
            raise ValueError(f"a video needs even sides of at least 2, not {width}x{height}")
        self.output = output
        self.path = output.path
        self.width, self.height, self.fps = width, height, fps
        self.encoder = choose_encoder(encoder)
        self._container = av.open(
            output, "w", format="mp4",
            options={"movflags": FRAGMENTED_MP4},
            # Hand every written fragment to the OS at once: kill -9 cannot lose it then.
            container_options={"flush_packets": "1"},
        )  # fmt: skip
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
        self._fragment_starts: list[int] = []  # slot of each keyframe: where each fragment starts

    def write(self, picture_bgr: np.ndarray, index: int) -> None:
        """Encode one BGR picture of the file's size at slot `index` of the video clock.

        RecordingError when the file cannot take it (a full disk): the file then ends at its
        last complete fragment, and says how many seconds it keeps.
        """
        yuv = cv2.cvtColor(picture_bgr, cv2.COLOR_BGR2YUV_I420)  # ~2x faster than swscale here
        frame = self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = index
        with self._failing_output():
            for packet in self._stream.encode(frame):
                if packet.is_keyframe:
                    self._fragment_starts.append(packet.pts)
                self._container.mux(packet)
        self.pictures += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (it already plays before this)."""
        try:
            with self._failing_output():
                try:
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
                finally:
                    self._container.close()  # writes the last fragment, then the index
        finally:
            self.output.close()

    @contextlib.contextmanager
    def _failing_output(self) -> Iterator[None]:
        """A failed write of the file (PyAV hands back the OSError it raised) as one line."""
        try:
            yield
        except OSError:
            failure = self.output.failure
            if failure is None:
                raise
            kept = self.output.fragments
            starts = self._fragment_starts
            seconds = (starts[kept] if kept < len(starts) else self.pictures) / self.fps
            raise RecordingError(
                f"{failure.strerror or failure}; the file keeps its first {seconds:.1f} s "
                "(every fragment completed before); free some space or write to another disk"
            ) from None


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

    `create` (a path: that very name, created new) is called on the writer thread with the first
    picture, and the encoder opened with its size, so neither a slow disk nor opening the encoder
    (NVENC probing can take a second) ever delays the caller. A failure stops the file with one
    logged line; later pictures are dropped (counted).
    """

    def __init__(
        self,
        create: Path | Callable[[], VideoOutput],
        fps: int,
        encoder: str = "auto",
        queue_size: int | None = None,
        nice: int = 0,
        segment_pictures: int = 0,
        finished: Callable[[Path], None] | None = None,
    ) -> None:
        self._create = partial(create_free, [create]) if isinstance(create, Path) else create
        self.path: Path | None = None
        """The file being written, once the writer thread created it."""
        self.paths: list[Path] = []
        """Every file of this recording, the first first (one per segment)."""
        self.finished_pictures: list[int] = []
        """Pictures in each finished file, in the order of `paths`."""
        self._segment_pictures = segment_pictures
        """Start a new file once a file spans this many slots (0: never)."""
        self._finished = finished
        """Called on the writer thread with each file once it is finished whole (the disk
        budget)."""
        self.fps = fps
        self._encoder = encoder
        self._nice = nice
        size = queue_size if queue_size is not None else max(1, round(fps * QUEUE_SECONDS))
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.counts = WriterCounts()
        self.error: BaseException | None = None
        self.failed = threading.Event()
        """Set when the file stopped on an error (`error`): nothing more will be written."""
        self.hurried = threading.Event()
        """Set when `close` gave up waiting for the queue: what is still queued is left out."""
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
        """Write what is queued, finish the file and end the thread.

        A writer still busy after `timeout` (its thread runs niced, so a machine busy with the
        game can starve it) leaves the rest of its queue out, counted as dropped, and finishes
        the file with what it wrote: a stop must not wait on the encoder for long, nor end the
        process while the encoder is still inside FFmpeg.
        """
        queued = self._put_close(timeout)
        if queued:
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "the video writer is still busy with %s after %.0f s; the pictures still "
                "queued are left out", self.path or "a file not yet created", timeout,
            )  # fmt: skip
            self.hurried.set()  # the thread now empties the queue at once
            if not queued:
                self._put_close(timeout)
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the video writer did not finish %s within %.0f s", self.path, timeout)

    def _put_close(self, timeout: float) -> bool:
        """Queue the end of the file behind the pictures; False if the queue stayed full."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self._queue.put(_CLOSE, timeout=0.1)
                return True
            except queue.Full:
                if time.monotonic() > deadline:
                    return False
        return True

    def _run(self) -> None:
        lower_this_threads_priority(self._nice)
        cpu_start = time.thread_time()
        file: VideoFile | None = None
        try:
            while True:
                item = self._queue.get()
                if item is _CLOSE:
                    break
                if self.hurried.is_set():
                    self.counts.dropped += 1
                    continue
                picture, index = item
                if file is None:
                    file, start = self._open(*picture.shape[:2]), index
                elif self._segment_pictures and index - start >= self._segment_pictures:
                    # A new file from this picture on: it starts with a keyframe at its own
                    # time 0, and no picture is left out between the two.
                    done, file = file, None
                    self._finish(done)
                    self._report_finished(done.path)
                    file, start = self._open(*picture.shape[:2]), index
                file.write(picture, index - start)
                self.counts.written += 1
        except BaseException as error:
            self._failed(error)
            # Keep taking pictures so offer() goes on dropping them instead of filling up.
            while self._queue.get() is not _CLOSE:
                self.counts.dropped += 1
        finally:
            if file is not None:
                try:
                    self._finish(file)
                except Exception as error:  # the last fragment, written on close
                    self._failed(error)
                else:
                    self._report_finished(file.path)
            self.counts.cpu_seconds = time.thread_time() - cpu_start

    def _finish(self, file: VideoFile) -> None:
        file.close()
        self.finished_pictures.append(file.pictures)

    def _report_finished(self, path: Path) -> None:
        if self._finished is not None:
            self._finished(path)

    def _failed(self, error: BaseException) -> None:
        """One line for the first error that stopped the file (a traceback only for a bug)."""
        if self.error is None:
            self.error = error
            self.failed.set()
            log_failure(log, f"recording to {self.path} stopped", error)

    def _open(self, height: int, width: int) -> VideoFile:
        try:
            output = self._create()
        except OSError as error:
            where = error.filename or "the video file"
            raise RecordingError(
                f"cannot create {where} ({error.strerror or error}); set record.folder (or "
                "--record PATH) to a folder this user can write"
            ) from None
        self.path = output.path
        self.paths.append(output.path)
        try:
            file = VideoFile(output, width, height, self.fps, self._encoder)
        except BaseException:
            output.close()
            raise
        self.encoder_used = file.encoder
        return file
