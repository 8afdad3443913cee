"""The stream process: where the network writes happen, so that a stuck ingest can be let go.

PyAV writes to an RTMP connection in blocking calls that nothing can interrupt: PyAV installs
no interrupt callback on output containers, and the URL is opened without a read/write timeout.
A thread stuck in such a call (an ingest that accepted the connection and stopped reading, a
network that drops every packet) can neither be stopped nor reused. A process can be killed.
So `StreamProcess` starts `python -m agent.stream.worker`, which holds one `Publisher` at a
time; the sender gives every command a time limit and kills the process when it is exceeded.

Protocol, one JSON object per line. In (stdin): {"connect": {Publisher's arguments}},
{"picture": index, "width": w, "height": h} followed by the picture's I420 bytes (w * h * 3/2);
the end of the input ends the connection and the process. Out (stdout): {"ready": 1} once, then for
each command {"done": 1} or {"failed": message, "kind": what failed}. The process writes nothing
else; FFmpeg's messages are caught and folded into "failed". The URL with the stream key
crosses the pipe only, never the command line, where other users of the machine could read it.

The process is in a session of its own, so the terminal's Ctrl-C goes to the drive, which ends
the stream properly; on Linux it also dies with the thread that started it (kill -9 included).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, BinaryIO

import numpy as np

from agent.errors import one_line

log = logging.getLogger(__name__)

STOP_POLL = 0.1
"""Real seconds between looks at the stop request while waiting for the stream process."""
NICE = 5
"""How much the stream process yields the CPU to the drive (POSIX niceness, added)."""
STDERR_LINES = 5
"""Lines of the stream process's own error output kept for the message when it ends."""

_ENDED = object()


class StreamFailure(Exception):
    """The stream broke: one line (key hidden) in `str(error)`, and what kind of failure it
    was (`kind`), so each kind is logged once however often it repeats."""

    def __init__(self, message: str, kind: str, *, stuck: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.stuck = stuck
        """The stream process no longer answers (or has ended): it must be replaced."""


class Interrupted(Exception):
    """The sender is stopping: a wait for the stream process was given up."""


class StreamProcess:
    """The drive's end of one stream process: commands with time limits.

    `scrub` hides the stream key in anything the process says. Every wait also ends when
    `stopping` is set (within STOP_POLL), raising Interrupted.
    """

    def __init__(
        self,
        scrub: Callable[[str], str],
        stopping: threading.Event,
        command: list[str] | None = None,
    ) -> None:
        self._scrub = scrub
        self._stopping = stopping
        self._replies: queue.Queue[Any] = queue.Queue()
        self._awaited = 0  # replies not taken yet: more than one after an interrupted wait
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._process = _spawn(command or [sys.executable, "-m", __name__, str(os.getpid())])
        self._readers = [
            threading.Thread(target=self._read_replies, name="stream replies", daemon=True),
            threading.Thread(target=self._read_stderr, name="stream stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def wait_ready(self, timeout: float) -> None:
        """Until the process has loaded PyAV and waits for commands."""
        self._reply(timeout, "start")

    def connect(self, settings: dict[str, Any], timeout: float) -> None:
        """Open a connection (Publisher's arguments) within `timeout` real seconds."""
        self._call({"connect": settings}, None, timeout, "connect")

    def send(self, i420: np.ndarray, index: int, timeout: float) -> None:
        """Send one I420 picture ((height * 3/2, width) uint8) for slot `index`."""
        height = i420.shape[0] * 2 // 3
        header = {"picture": index, "width": i420.shape[1], "height": height}
        self._call(header, memoryview(np.ascontiguousarray(i420)).cast("B"), timeout, "send")

    def end(self, timeout: float, *, gracefully: bool = True) -> None:
        """End the process, within about 3 x `timeout` real seconds whatever it is doing:
        `gracefully`, its input ends, so it closes its connection (the ingest hears the
        broadcast end) and exits; then it is terminated, then killed."""
        process = self._process
        stops = (self._close_input, process.terminate, process.kill)
        for stop in stops if gracefully else stops[1:]:
            with contextlib.suppress(OSError):
                stop()
            try:
                process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        for reader in self._readers:
            reader.join(timeout)
        for pipe in (process.stdin, process.stdout, process.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def _close_input(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()

    def _call(
        self, command: dict[str, Any], payload: memoryview | None, timeout: float, what: str
    ) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(command).encode() + b"\n")
            if payload is not None:
                stdin.write(payload)
            stdin.flush()
        except (OSError, ValueError):  # a broken pipe, or closed: the process has ended
            raise self._ended(what) from None
        self._reply(timeout, what)

    def _reply(self, timeout: float, what: str) -> None:
        """The answer to the last command (answers to commands whose wait was interrupted
        come first and are passed over)."""
        self._awaited += 1
        # Real time: this bounds a network and a process, it is not a timing rule of Charles.
        deadline = time.monotonic() + timeout
        while True:
            if self._stopping.is_set():
                raise Interrupted
            try:
                reply = self._replies.get(timeout=STOP_POLL)
                if reply is _ENDED:
                    break
                self._awaited -= 1
                if self._awaited == 0:
                    break
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise StreamFailure(
                        f"the ingest did not answer within {timeout:.0f} s ({what})",
                        f"no answer ({what})",
                        stuck=True,
                    ) from None
        if reply is _ENDED:
            raise self._ended(what)
        if "failed" in reply:
            message = self._scrub(one_line(reply["failed"], limit=200))
            raise StreamFailure(message, self._scrub(str(reply.get("kind", message))))

    def _ended(self, what: str) -> StreamFailure:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(1.0)
        status = self._process.poll()
        last = f": {self._stderr[-1]}" if self._stderr else ""
        return StreamFailure(
            f"the stream process ended (exit status {status}) during {what}{last}",
            "stream process ended",
            stuck=True,
        )

    def _read_replies(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for line in stdout:
                with contextlib.suppress(ValueError):
                    self._replies.put(json.loads(line))
        self._replies.put(_ENDED)

    def _read_stderr(self) -> None:
        """The process's own error output (a crash's traceback): kept and logged, key hidden."""
        stderr = self._process.stderr
        assert stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in stderr:
                line = self._scrub(raw.decode("utf-8", "replace").rstrip())
                if line:
                    self._stderr.append(one_line(line, limit=200))
                    log.debug("stream process: %s", line)


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


# The stream process's side.


def serve(commands: BinaryIO, replies: IO[bytes]) -> None:
    """Answer commands from `commands` until its end (see the module's docstring)."""
    from agent.stream.publisher import Publisher

    av = _quiet_av()
    _answer(replies, {"ready": 1})
    publisher: Publisher | None = None
    try:
        for line in commands:
            command = json.loads(line)
            picture = None
            if "picture" in command:
                picture = _read_picture(commands, command)
                if picture is None:
                    break  # the drive's end closed inside a picture: it has gone
            try:
                if "connect" in command:
                    if publisher is not None:
                        publisher.close()
                        publisher = None
                    with av.logging.Capture() as logs:
                        try:
                            publisher = Publisher(**command["connect"])
                        except (OSError, av.FFmpegError) as error:
                            raise _Failed(error, logs) from None
                elif picture is not None:
                    if publisher is None:
                        raise RuntimeError("a picture before the connection")
                    with av.logging.Capture() as logs:
                        try:
                            publisher.send(picture, int(command["picture"]))
                        except (OSError, av.FFmpegError) as error:
                            raise _Failed(error, logs) from None
            except _Failed as failed:
                if publisher is not None:
                    publisher.close()
                    publisher = None
                _answer(replies, {"failed": failed.message, "kind": failed.kind})
            else:
                _answer(replies, {"done": 1})
    finally:
        if publisher is not None:
            publisher.close()


class _Failed(Exception):
    """A network failure, described in one line from PyAV's error and FFmpeg's last message."""

    def __init__(self, error: BaseException, logs: list[tuple[int, str, str]]) -> None:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self.kind = str(reason)
        details = [message.strip() for level, _, message in logs if message.strip()]
        self.message = f"{reason} ({details[-1]})" if details else str(reason)
        super().__init__(self.message)


def _read_picture(commands: BinaryIO, command: dict[str, Any]) -> np.ndarray | None:
    """The picture's bytes after its command line; None at the end of the input."""
    width, height = int(command["width"]), int(command["height"])
    size = width * height * 3 // 2
    data = commands.read(size)
    if len(data) != size:
        return None
    return np.frombuffer(data, np.uint8).reshape(height * 3 // 2, width)


def _answer(replies: IO[bytes], message: dict[str, Any]) -> None:
    replies.write(json.dumps(message).encode() + b"\n")
    replies.flush()


def _quiet_av() -> Any:
    """PyAV with FFmpeg's messages caught for failure reports and never printed: they may
    name the URL, and with it the key."""
    import av
    import av.logging

    av.logging.set_level(av.logging.ERROR)
    libav = logging.getLogger("libav")
    libav.propagate = False
    libav.addHandler(logging.NullHandler())
    return av


def main(argv: list[str]) -> None:
    from agent.runtime.lifetime import die_with_parent

    if argv and not die_with_parent(int(argv[0])):
        return
    if hasattr(os, "nice"):  # the car before the stream: a busy machine drops pictures here
        os.nice(NICE)
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main(sys.argv[1:])
