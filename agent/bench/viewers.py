"""The live view's viewers as benchmarks play them: HTTP clients on 127.0.0.1 that keep reading
a streaming endpoint (as an OBS Browser or Media Source does), and a look at /status.json."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any

from agent.live.mjpeg import INDEX_HEADER


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status_json(port: int) -> dict[str, Any] | None:
    """The drive's status snapshot from its live view; None while it does not answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/status.json")
        return json.loads(connection.getresponse().read())["status"]
    except (OSError, ValueError, KeyError):
        return None
    finally:
        connection.close()


class Viewer(threading.Thread):
    """Keeps reading `path` and counts the bytes; connects again when the drive goes away for
    a moment (its game restarting) until `stopping` is set."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(name=f"viewer {path}", daemon=True)
        self.port, self.path = port, path
        self.bytes = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("GET", self.path)
                response = connection.getresponse()
                self.read(response)
            except OSError:
                self.stopping.wait(1.0)  # the drive restarting its game, or ending
            finally:
                connection.close()

    def read(self, response: http.client.HTTPResponse) -> None:
        while not self.stopping.is_set():
            data = response.read1(65536)
            if not data:
                return
            self.bytes += len(data)


class MjpegViewer(Viewer):
    """Reads a multipart JPEG stream part by part and keeps each JPEG with the monotonic time
    its last byte arrived: the pictures are decoded afterwards, so the viewer's own decoding
    takes no CPU from the drive while it is being measured."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(port, path)
        self.pictures: list[tuple[float, int, bytes]] = []
        """(arrived at, video clock index, JPEG bytes) of every picture, in arrival order."""

    def read(self, response: http.client.HTTPResponse) -> None:
        while not self.stopping.is_set():
            length = index = None
            while True:  # the part's headers, up to the blank line after them
                line = response.fp.readline()
                if not line:
                    return
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == INDEX_HEADER.lower():
                    index = int(value)
                elif not line.strip() and length is not None:
                    break
            data = response.fp.read(length)
            if len(data) < length:
                return
            self.pictures.append((time.monotonic(), index if index is not None else -1, data))
            self.bytes += len(data)
