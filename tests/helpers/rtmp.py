"""A real RTMP ingest for tests: FFmpeg's RTMP listen mode through PyAV, in a process of its own.

`RtmpListener(port)` starts `python -m tests.helpers.rtmp PORT`, which waits for one publisher
on rtmp://127.0.0.1:PORT/live/test, decodes everything that arrives and reports it on stdout,
one JSON object per line, as it happens (so a listener that is killed has reported all it
received): {"streams": {...}} once the stream's header is read, then {"frame": {...}} for each
decoded video picture (its size, its time in ms, whether it was a keyframe, and the video
clock slot `stamp_index` wrote into it), {"audio": n} for every audio packet, and {"end": why}.

Being a separate process, it can be killed the way an ingest goes away, and restarted on the
same port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

INDEX_BITS = 16
BLOCK = 20
"""Pixels of one bit's square in the picture's top row: big enough to survive H.264."""


def stamp_index(image: np.ndarray, index: int) -> None:
    """Write `index` into the top row of `image` (BGR) as INDEX_BITS black or white squares."""
    for bit in range(INDEX_BITS):
        value = 255 if index >> bit & 1 else 0
        image[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = value


def read_index(gray: np.ndarray) -> int:
    """The index `stamp_index` wrote, read from a decoded luminance picture."""
    index = 0
    for bit in range(INDEX_BITS):
        square = gray[2 : BLOCK - 2, bit * BLOCK + 2 : (bit + 1) * BLOCK - 2]
        index |= int(square.mean() > 128) << bit
    return index


def free_port() -> int:
    """A TCP port nothing on 127.0.0.1 listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (Linux: read from /proc, without
    connecting, which would take the listener's one connection)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(
            fields[1] == wanted and fields[3] == "0A"
            for fields in (line.split() for line in table.readlines()[1:])
        )


@dataclass(frozen=True)
class ReceivedFrame:
    width: int
    height: int
    ms: int
    """Its time in the stream (FLV: milliseconds)."""
    keyframe: bool
    index: int
    """The video clock slot written into it."""


class RtmpListener:
    """An RTMP ingest on 127.0.0.1:`port` for one publisher, in a process of its own."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.port = port
        self.url = f"rtmp://127.0.0.1:{port}/live/test"
        self.frames: list[ReceivedFrame] = []
        self.streams: dict[str, list[object]] = {}
        self.audio_packets = 0
        self.ended: str | None = None
        self._changed = threading.Condition()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.rtmp", str(port), str(timeout)],
            stdout=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise AssertionError(f"the RTMP listener did not listen within {timeout} s")
            time.sleep(0.02)

    def wait_for(self, frames: int, timeout: float) -> bool:
        """Until `frames` pictures have arrived (False after `timeout` real seconds)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.frames) >= frames, timeout)

    def wait_ended(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.ended is not None, timeout)

    def kill(self) -> None:
        """Go away as an ingest that crashed does: no goodbye."""
        self._process.kill()
        self._process.wait()
        self._reader.join(5.0)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            event = json.loads(line)
            with self._changed:
                if "frame" in event:
                    self.frames.append(ReceivedFrame(**event["frame"]))
                elif "streams" in event:
                    self.streams = event["streams"]
                elif "audio" in event:
                    self.audio_packets += 1
                elif "end" in event:
                    self.ended = event["end"]
                self._changed.notify_all()
        with self._changed:
            self.ended = self.ended or "killed"
            self._changed.notify_all()


def _listen(port: int, timeout: float) -> None:
    import av

    def say(event: dict[str, object]) -> None:
        print(json.dumps(event), flush=True)

    container = av.open(
        f"rtmp://127.0.0.1:{port}/live/test",
        "r",
        format="flv",
        # Listen for one publisher; report its stream as soon as its first packets are read.
        options={
            "listen": "1",
            "timeout": str(int(timeout)),
            "analyzeduration": "100000",
            "probesize": "4096",
        },
        timeout=(timeout + 5, 5.0),
    )
    streams: dict[str, list[object]] = {}
    for stream in container.streams:
        context = stream.codec_context
        if stream.type == "audio":
            streams["audio"] = [context.name, context.sample_rate, context.channels]
        elif stream.type == "video":
            streams["video"] = [context.name]
    say({"streams": streams})
    try:
        for packet in container.demux():
            if packet.stream.type == "audio" and packet.size:
                say({"audio": 1})
            elif packet.stream.type == "video":
                for frame in packet.decode():
                    gray = frame.to_ndarray(format="gray")
                    say({"frame": {
                        "width": frame.width, "height": frame.height,
                        "ms": int(frame.pts * frame.time_base * 1000), "keyframe": frame.key_frame,
                        "index": read_index(gray),
                    }})  # fmt: skip
    except (OSError, av.FFmpegError) as error:
        say({"end": getattr(error, "strerror", None) or str(error)})
    else:
        say({"end": "end of stream"})


if __name__ == "__main__":
    _listen(int(sys.argv[1]), float(sys.argv[2]))
