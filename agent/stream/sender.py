"""The stream sender: the drive's pictures, live, to a streaming service, whatever the network does.

`StreamSender` watches a `PictureFeed` (so the drawing thread draws its pictures) and sends the
newest picture whenever the stream is ready for one: a picture drawn while the stream is busy
or offline is dropped (counted), never queued, and the drawing thread never waits (`put`
overwrites). The encoding and the network are in the stream process (`agent.stream.worker`),
because a thread stuck in PyAV's network write cannot be interrupted and a process can be
killed: `stop()` returns within `StreamTimeouts.stop_bound` seconds whatever the network does.

When the ingest goes away (refused, reset, a write that fails or hangs) the car drives on: the
sender drops the connection, waits (`Backoff`: 1, 2, 4 ... 30 s on its clock) and connects
again, as often as it takes. Each kind of failure is logged once; the drive summary reads the
counts from `report()`. The stream key never appears in a log line, message, report or repr
(`agent.stream.target`).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agent.config.schema import StreamConfig
from agent.errors import one_line
from agent.record.pictures import Picture, PictureFeed
from agent.record.writer import even_size, require_av
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.stream.backoff import Backoff
from agent.stream.target import StreamTarget, check_stream_settings, stream_target
from agent.stream.worker import Interrupted, StreamFailure, StreamProcess

log = logging.getLogger(__name__)

PICTURE_POLL = 0.25
"""Real seconds between looks at the stop request while no picture comes."""


@dataclass(frozen=True)
class StreamTimeouts:
    """Real seconds the stream process gets for each step before it counts as stuck."""

    start: float = 30.0
    """To start and load PyAV (seconds on a busy machine)."""
    connect: float = 10.0
    """To connect, publish and write the stream's header."""
    send: float = 5.0
    """To encode and send one picture: an ingest that takes longer is not live any more."""
    close: float = 2.0
    """To end the broadcast at `stop()`, and again each to terminate and to kill."""

    @property
    def stop_bound(self) -> float:
        """The longest `stop()` takes (seconds)."""
        return 3 * self.close + 2 * PICTURE_POLL + 1.0


@dataclass(frozen=True)
class StreamReport:
    """What the stream did, for the drive summary; the URL without its key."""

    url: str
    """The ingest, key hidden: rtmp://host/app/****."""
    pictures_sent: int
    pictures_dropped: int
    """Video clock slots since the first picture that were not sent: drawn while the stream
    was busy or offline (the newest picture wins), or not drawn at all."""
    reconnects: int
    """Connections after the first."""
    failures: int
    """Attempts to connect that failed, and connections that broke."""
    seconds_connected: float
    """Clock seconds with a connection up."""
    last_error: str | None
    """The latest failure, one line, key hidden."""
    connected: bool
    """Whether a connection is up now."""


class StreamSender:
    """Sends the pictures of `pictures` (BGR uint8, drawn at `fps` on the video clock) to
    `config.url`, from `start()` to `stop()`; a context manager.

    Refuses settings that cannot work with a one-line ConfigError (`check_stream_settings`).
    `environ` (os.environ) may hold the key, `timeouts` bounds each step in real seconds,
    `backoff` spaces the attempts on `clock`, `command` starts the stream process (tests).
    """

    def __init__(
        self,
        config: StreamConfig,
        pictures: PictureFeed,
        fps: int,
        clock: Clock = SYSTEM_CLOCK,
        *,
        environ: Mapping[str, str] | None = None,
        timeouts: StreamTimeouts = StreamTimeouts(),
        backoff: Backoff | None = None,
        command: list[str] | None = None,
    ) -> None:
        check_stream_settings(config, environ)
        require_av()  # a missing PyAV is said now, not after the drive has started
        if fps < 1:
            raise ValueError(f"a stream needs a positive frame rate, not {fps}")
        self._target: StreamTarget = stream_target(config, environ)
        self._config = config
        self._pictures = pictures
        self._fps = fps
        self._clock = clock
        self._timeouts = timeouts
        self._backoff = backoff or Backoff()
        self._command = command
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: StreamProcess | None = None
        self._size: tuple[int, int] | None = None  # width, height of the connection
        self._logged_kinds: set[str] = set()
        self._lock = threading.Lock()  # guards the counts below, read by report()
        self._sent = 0
        self._dropped = 0
        self._first_index: int | None = None
        self._last_index = 0  # the last slot sent, or the one before the first picture
        self._connections = 0
        self._failures = 0
        self._connected_since: float | None = None
        self._seconds_connected = 0.0
        self._last_error: str | None = None
        self._finished = False

    def __repr__(self) -> str:
        return f"StreamSender({self._target.shown}, {self._fps} fps)"

    @property
    def url(self) -> str:
        """The ingest as people may see it (key hidden)."""
        return self._target.shown

    def start(self) -> StreamSender:
        if self._thread is not None:
            raise RuntimeError("a StreamSender starts once")
        picture, _ = self._pictures.get()
        if picture is not None:
            self._seen(picture)
        self._thread = threading.Thread(target=self._run, name="stream sender", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the stream; returns within `timeouts.stop_bound` seconds, network or not."""
        self._stopping.set()
        if self._thread is None:
            return
        self._thread.join(self._timeouts.stop_bound)
        if self._thread.is_alive():  # a bug: the thread should have ended by now
            log.error("the stream sender did not stop within %.0f s", self._timeouts.stop_bound)
            process = self._process
            if process is not None:
                process.end(self._timeouts.close, gracefully=False)

    def __enter__(self) -> StreamSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> StreamReport:
        """The counts so far (final once stopped)."""
        newest, _ = self._pictures.get()
        with self._lock:
            dropped = self._dropped
            if not self._finished and newest is not None and self._first_index is not None:
                # Slots between the last one sent and the newest, which may still go out.
                dropped += max(0, newest.index - self._last_index - 1)
            seconds = self._seconds_connected
            if self._connected_since is not None:
                seconds += self._clock.now() - self._connected_since
            return StreamReport(
                url=self._target.shown,
                pictures_sent=self._sent,
                pictures_dropped=dropped,
                reconnects=max(0, self._connections - 1),
                failures=self._failures,
                seconds_connected=seconds,
                last_error=self._last_error,
                connected=self._connected_since is not None,
            )

    # The sender thread.

    def _run(self) -> None:
        try:
            with self._pictures.watch(every_slot=True):
                if self._wait_for_first_picture():
                    self._stream()
        except Interrupted:
            pass
        except BaseException as error:  # a bug; the drive goes on without its stream
            # Logged by hand: a traceback logged as is could carry the URL, key and all.
            trace = self._target.scrub(traceback.format_exc())
            log.error("the stream to %s stopped: %s", self.url, trace)
            with self._lock:
                self._last_error = self._target.scrub(one_line(error))
        finally:
            # With a connection up, its process ends it (the ingest hears the broadcast end);
            # one still connecting cannot hear anything until the network lets it go.
            self._end_process(gracefully=self._connected_since is not None)
            self._finish()

    def _finish(self) -> None:
        """Final counts: the slots drawn after the last one sent are dropped too."""
        newest, _ = self._pictures.get()
        with self._lock:
            if newest is not None and self._first_index is not None:
                self._dropped += max(0, newest.index - self._last_index)
                self._last_index = max(self._last_index, newest.index)
            self._disconnected()
            self._finished = True

    def _wait_for_first_picture(self) -> bool:
        seq = 0
        while not self._stopping.is_set():
            picture, seq = self._pictures.wait_newer(seq, PICTURE_POLL)
            if picture is not None:
                with self._lock:
                    if self._first_index is None:
                        self._seen(picture)
                return True
        return False

    def _seen(self, picture: Picture) -> None:
        """The first picture: slots count from here."""
        self._first_index = picture.index
        self._last_index = picture.index - 1

    def _stream(self) -> None:
        """Connect, send, and after each failure wait and connect again, until stopped."""
        while not self._stopping.is_set():
            try:
                self._connect()
                self._send_pictures()
            except StreamFailure as failure:
                self._clock.wait(self._stopping, self._failed(failure))

    def _connect(self) -> None:
        process = self._ready_process()
        picture, _ = self._pictures.get()
        assert picture is not None  # there was a first picture
        height, width = picture.image.shape[:2]
        self._size = even_size(width, height)
        settings: dict[str, Any] = {
            "url": self._target.url,
            "muxer": self._target.muxer,
            "width": self._size[0],
            "height": self._size[1],
            "fps": self._fps,
            "bitrate_kbps": self._config.bitrate_kbps,
            "keyframe_seconds": self._config.keyframe_seconds,
        }
        process.connect(settings, self._timeouts.connect)
        with self._lock:
            self._connections += 1
            self._connected_since = self._clock.now()
            connections = self._connections
        if connections == 1:
            log.info("streaming to %s", self.url)
        else:
            log.info("the stream to %s is back (reconnect %d)", self.url, connections - 1)

    def _ready_process(self) -> StreamProcess:
        if self._process is None:
            self._process = StreamProcess(self._target.scrub, self._stopping, self._command)
            try:
                self._process.wait_ready(self._timeouts.start)
            except StreamFailure:
                self._end_process(gracefully=False)
                raise
        return self._process

    def _send_pictures(self) -> None:
        """The newest picture each time the stream is ready for one, until stopped."""
        process = self._process
        assert process is not None
        seq = 0
        while not self._stopping.is_set():
            picture, newest = self._pictures.wait_newer(seq, PICTURE_POLL)
            if picture is None or newest == seq:
                continue
            seq = newest
            if picture.index <= self._last_index:
                continue  # not newer on the video clock than what went out
            process.send(self._i420(picture.image), picture.index, self._timeouts.send)
            with self._lock:
                self._sent += 1
                self._dropped += picture.index - self._last_index - 1
                self._last_index = picture.index

    def _i420(self, image: np.ndarray) -> np.ndarray:
        """The picture in the connection's size (cropped to even sides; resized should the
        layout change size mid-stream) as I420, half the bytes of BGR through the pipe."""
        assert self._size is not None
        width, height = self._size
        image = image[:height, :width]
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)

    def _failed(self, failure: StreamFailure) -> float:
        """Count and log (once per kind) a failure, let the process go when it is stuck;
        returns the seconds to wait before the next attempt."""
        with self._lock:
            self._failures += 1
            self._last_error = str(failure)
            lasted = self._disconnected()
        if lasted is not None:
            self._backoff.connected_for(lasted)
        if failure.stuck:
            self._end_process(gracefully=False)
        wait = self._backoff.next_wait()
        if failure.kind not in self._logged_kinds:
            self._logged_kinds.add(failure.kind)
            log.warning(
                "stream to %s: %s; trying again in %g s, then less often (every %g s at most), "
                "while the car drives on",
                self.url, failure, wait, self._backoff.longest,
            )  # fmt: skip
        else:
            log.debug("stream to %s: %s; again in %g s", self.url, failure, wait)
        return wait

    def _disconnected(self) -> float | None:
        """The connection is down: its seconds added up and returned (None: none was up).
        Lock held."""
        if self._connected_since is None:
            return None
        lasted = self._clock.now() - self._connected_since
        self._seconds_connected += lasted
        self._connected_since = None
        return lasted

    def _end_process(self, gracefully: bool) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.end(self._timeouts.close, gracefully=gracefully)
