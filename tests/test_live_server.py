"""The live view for OBS: a real server on 127.0.0.1 and real HTTP clients.

Every client is http.client (or a bare socket) on the test's threads, with a socket timeout,
and reads a bounded number of parts or events: nothing here waits for a guessed time. The
overlay's pace and rates are checked on a fake clock.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from agent.checkpoints.watcher import Rejection
from agent.config.schema import LiveConfig
from agent.drive.hotswap import Swap
from agent.drive.status import DriveStatus
from agent.errors import CharlesError, ConfigError
from agent.live.address import check_live_settings, is_loopback, parse_address
from agent.live.mjpeg import BOUNDARY, CONTENT_TYPE
from agent.live.server import OVERLAY_ELEMENT_IDS, LiveServer
from agent.record.pictures import Picture, PictureFeed
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.slot import Slot
from agent.types import ControllerState, Frame, Prediction, Region, Tick
from tests.helpers.clock import FakeClock
from tests.helpers.waiting import wait_until

IO_TIMEOUT = 5.0
"""Real seconds any socket read may take: a bound for a broken server, not an expectation."""
TOKEN = "s3cret-token"


@dataclass
class Served:
    server: LiveServer
    port: int
    status: Slot[DriveStatus]
    ticks: Slot[Tick]
    feeds: dict[str, PictureFeed]


@contextlib.contextmanager
def serving(clock: Clock = SYSTEM_CLOCK, losses: Any = None, **settings: Any) -> Iterator[Served]:
    """A started server on a free loopback port, with empty slots and feeds."""
    config = LiveConfig(**{"address": "127.0.0.1:0", **settings})
    status: Slot[DriveStatus] = Slot()
    ticks: Slot[Tick] = Slot()
    feeds = {"layout": PictureFeed("layout"), "hud": PictureFeed("hud")}
    with LiveServer(config, status, feeds, losses, clock, ticks) as server:
        port = urlsplit(server.url).port
        assert port
        yield Served(server, port, status, ticks, feeds)


def snapshot(**changes: Any) -> DriveStatus:
    values = dict(
        state="driving", model="pilotnet_small/v0002", backend="tensorflow", version="v0002",
        batches=1200, at=100.0, frames=0, ticks=0, predictions=0, skipped=0, nonfinite=0,
        unstucks=0,
    )  # fmt: skip
    return DriveStatus(**{**values, **changes})


def picture(index: int, shape: tuple[int, int, int] = (120, 160, 3)) -> Picture:
    """A flat picture whose grey level says its index (JPEG keeps a flat level)."""
    image = np.full(shape, (index * 40) % 250, np.uint8)
    return Picture(image=image, index=index, frame_seq=index, drawn_at=0.0)


def request(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes, http.client.HTTPMessage]:
    """A whole (non-streaming) response: status, body, headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.headers
    finally:
        connection.close()


class Stream:
    """A streaming GET (pictures or events), read on the thread that calls its methods."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()
        self.event_id: int | None = None
        """The `id:` of the newest event read (the server numbers the events it publishes)."""

    def close(self) -> None:
        self.hang_up()
        self.connection.close()

    def hang_up(self) -> None:
        """End the connection; a read on another thread ends at once (close would not wake
        it, and must not run beside it)."""
        if self.connection.sock is not None:
            with contextlib.suppress(OSError):  # the server hung up first
                self.connection.sock.shutdown(socket.SHUT_RDWR)

    def part(self) -> tuple[int, bytes]:
        """The next MJPEG part: its picture index and JPEG bytes."""
        line = self.response.readline()
        for _ in range(3):  # the CRLF that ends the part before
            if line.strip():
                break
            line = self.response.readline()
        assert line.strip() == f"--{BOUNDARY}".encode(), line
        headers: dict[str, str] = {}
        for _ in range(20):
            line = self.response.readline().strip()
            if not line:
                break
            name, _, value = line.decode("ascii").partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        size = int(headers["content-length"])
        jpeg = b""
        while len(jpeg) < size:
            chunk = self.response.read(size - len(jpeg))
            assert chunk, "the stream ended inside a picture"
            jpeg += chunk
        return int(headers["x-picture-index"]), jpeg

    def event(self) -> dict[str, Any]:
        """The next Server-Sent Event's JSON (strict: NaN or Infinity fail the test)."""
        for _ in range(100):
            line = self.response.readline()
            assert line, "the event stream ended"
            if line.startswith(b"id: "):
                self.event_id = int(line[len(b"id: ") :])
            if line.startswith(b"data: "):
                return json.loads(line[len(b"data: ") :], parse_constant=_not_json)
        raise AssertionError("no data line in 100 lines")


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} is not JSON: a browser's JSON.parse refuses it")


class PictureReader:
    """Reads MJPEG parts on a thread of its own until stopped: every index, the last `keep`
    JPEGs (a reader that kept them all would be the memory growth under test)."""

    def __init__(self, port: int, path: str = "/layout.mjpeg", keep: int = 100) -> None:
        self.stream = Stream(port, path)
        assert self.stream.response.status == 200
        self.received: list[int] = []
        self.jpegs: deque[tuple[int, bytes]] = deque(maxlen=keep)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, name="test viewer", daemon=True)
        self.thread.start()

    def indices(self) -> list[int]:
        return list(self.received)

    def stop(self) -> None:
        self._stop.set()
        self.stream.hang_up()
        self.thread.join(IO_TIMEOUT)
        self.stream.close()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                index, jpeg = self.stream.part()
                self.jpegs.append((index, jpeg))
                self.received.append(index)
        except (OSError, ValueError, AssertionError) as error:
            if not self._stop.is_set():
                self.error = error


def stalled_viewer(port: int, path: str, http: str = "1.1") -> socket.socket:
    """A viewer that asks for a stream and reads nothing until the test says so (a tiny
    receive buffer, so the server's socket fills after a few pictures). HTTP/1.0: no chunks."""
    viewer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    viewer.settimeout(IO_TIMEOUT)
    viewer.connect(("127.0.0.1", port))
    viewer.sendall(f"GET {path} HTTP/{http}\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return viewer


def read_raw_part(reader: Any) -> tuple[int, int]:
    """The next MJPEG part from a raw HTTP/1.0 stream (no chunks): its index and size."""
    headers: dict[str, str] = {}
    for _ in range(20):
        line = reader.readline()
        assert line, "the stream ended"
        if line.strip() == f"--{BOUNDARY}".encode():
            break
    for _ in range(20):
        line = reader.readline().strip()
        if not line:
            break
        name, _, value = line.decode("ascii").partition(":")
        headers[name.strip().lower()] = value.strip()
    size = int(headers["content-length"])
    assert len(reader.read(size)) == size
    return int(headers["x-picture-index"]), size


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere, where the send buffers alone are
    measured)."""
    if not os.path.exists("/proc/self/statm"):
        return 0
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- addresses and who may connect ---------------------------------------------------------


def test_addresses_parse_or_say_in_one_line_what_is_wrong() -> None:
    assert parse_address("127.0.0.1:47900") == ("127.0.0.1", 47900)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address("localhost:0") == ("localhost", 0)
    assert parse_address("0.0.0.0:47900") == ("0.0.0.0", 47900)
    for text, fragment in [
        ("47900", "has no port"),
        (":47900", "has no host"),
        ("127.0.0.1:", "the port must be a number"),
        ("127.0.0.1:http", "the port must be a number"),
        ("127.0.0.1:65536", "the port must be a number"),
        ("127.0.0.1:-1", "the port must be a number"),
        ("::1:80", "IPv6 host in brackets"),
        ("[localhost]:80", "only an IPv6 address goes in brackets"),
    ]:
        with pytest.raises(ConfigError) as raised:
            parse_address(text)
        message = str(raised.value)
        assert fragment in message and repr(text) in message and "\n" not in message, message
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1")
    assert is_loopback("LOCALHOST")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.com")


def test_an_address_beyond_this_machine_needs_a_token() -> None:
    for address in ("0.0.0.0:47900", "192.168.1.5:47900", "[::]:47900", "obs-pc:47900"):
        with pytest.raises(ConfigError) as raised:
            check_live_settings(LiveConfig(address=address))
        message = str(raised.value)
        assert "\n" not in message and "token" in message and address in message, message
        with pytest.raises(ConfigError):  # the server refuses it too, before binding anything
            LiveServer(LiveConfig(address=address), Slot(), {})
        assert check_live_settings(LiveConfig(address=address, token=TOKEN)) == parse_address(
            address
        )
    assert check_live_settings(LiveConfig()) == ("127.0.0.1", 47900)


def test_with_a_token_every_request_carries_it() -> None:
    with serving(token=TOKEN) as served:
        port = served.port
        for path in ("/", "/status.json", "/events", "/layout.mjpeg"):
            status, _, headers = request(port, path)
            assert status == 401 and "Bearer" in headers["WWW-Authenticate"], path
        assert request(port, "/status.json?token=wrong")[0] == 401
        assert request(port, "/status.json", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(port, "/status.json", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert request(port, f"/status.json?token={TOKEN}")[0] == 200
        assert request(port, "/status.json", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        events = Stream(port, f"/events?token={TOKEN}")
        try:
            assert events.response.status == 200 and events.event()["seq"] == 0
        finally:
            events.close()
        assert served.server.counts.unauthorized == 7


def test_without_a_token_only_a_loopback_host_is_answered() -> None:
    """A web page that rebinds its own name to 127.0.0.1 sends its name as Host: refused."""
    with serving() as served:
        port = served.port
        assert request(port, "/status.json", headers={"Host": f"evil.example:{port}"})[0] == 403
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
            assert request(port, "/status.json", headers={"Host": host})[0] == 200, host


def test_only_get_is_served() -> None:
    with serving() as served:
        for method in ("POST", "PUT", "DELETE", "HEAD"):
            assert request(served.port, "/status.json", method)[0] == 405, method
        assert request(served.port, "/", "POST")[0] == 405
        assert request(served.port, "/nothing-here")[0] == 404


def test_one_viewer_more_than_max_viewers_gets_503() -> None:
    with serving(max_viewers=2) as served:
        port = served.port
        events, layout = Stream(port, "/events"), Stream(port, "/layout.mjpeg")
        assert (events.response.status, layout.response.status) == (200, 200)
        status, body, headers = request(port, "/hud.mjpeg")
        assert status == 503 and b"max_viewers" in body and headers["Retry-After"]
        assert request(port, "/events")[0] == 503
        assert request(port, "/status.json")[0] == 200  # not a stream: never refused
        assert served.feeds["layout"].wanted
        layout.close()
        # The place of a viewer that went away is free once the server has seen it go.
        assert wait_until(lambda: not served.feeds["layout"].wanted)
        hud = Stream(port, "/hud.mjpeg")
        assert hud.response.status == 200
        for stream in (events, hud):
            stream.close()
        counts = served.server.counts
        assert (counts.refused, counts.viewers) == (2, 3)


def test_a_port_in_use_is_one_line_naming_the_address() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = LiveServer(LiveConfig(address=f"127.0.0.1:{port}"), Slot(), {})
        with pytest.raises(CharlesError) as raised:
            server.start()
        message = str(raised.value)
        assert "\n" not in message and f"127.0.0.1:{port}" in message and "in use" in message
        assert "--live HOST:PORT" in message, message
        server.stop()  # harmless after a failed start


# --- the page, the status and the overlay events ------------------------------------------


def test_the_overlay_page_has_the_documented_element_ids() -> None:
    with serving() as served:
        status, body, headers = request(served.port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        page = body.decode("utf-8")
        assert set(re.findall(r'\bid="([^"]+)"', page)) == set(OVERLAY_ELEMENT_IDS)
        assert re.search(r'<canvas id="losses"', page)
        assert 'new EventSource("events"' in page  # pushed, relative: works behind ?token=
        assert "<body>" in page and "transparent" not in re.search(r"<body[^>]*>", page)[0]
        clear = request(served.port, "/?transparent=1")[1].decode("utf-8")
        assert re.search(r"<body[^>]*>", clear)[0] == '<body class="transparent">'


def test_status_json_follows_the_snapshots() -> None:
    with serving() as served:
        document = json.loads(request(served.port, "/status.json")[1])
        assert document == {"seq": 0, "status": None, "rates": {"fps": 0.0, "pps": 0.0}}
        swap = Swap("fresh", "pilotnet_small/v0002", "v0002", 1200, 0.8, at=90.0)
        for frames in (10, 20, 30):
            served.status.put(snapshot(frames=frames, predictions=frames - 1, swaps=(swap,)))
            document = json.loads(request(served.port, "/status.json")[1])
            assert document["status"]["frames"] == frames
            assert document["status"]["predictions"] == frames - 1
        assert document["seq"] == 3
        assert document["status"]["swaps"] == [
            {"from_name": "fresh", "to_name": "pilotnet_small/v0002", "version": "v0002",
             "batches": 1200, "load_seconds": 0.8, "at": 90.0}
        ]  # fmt: skip


def test_events_arrive_after_a_new_snapshot() -> None:
    losses = [(100, 2.5), (200, float("nan")), (300, 1.25)]
    with serving(losses=lambda: losses) as served:
        events = Stream(served.port, "/events")
        try:
            assert events.response.headers["Content-Type"].startswith("text/event-stream")
            first = events.event()
            assert (first["seq"], first["state"], first["console"]) == (0, "starting", None)
            assert first["losses"] == [[100, 2.5], [200, None], [300, 1.25]]
            frame = Frame(np.zeros((2, 2, 4), np.uint8), 50.0, 7, Region(0, 0, 2, 2))
            served.ticks.put(
                Tick("driving", frame, Prediction(math.nan, 0.25, 0.004),
                     ControllerState(steering=0.0), commanded_at=50.02)
            )  # fmt: skip
            swap = Swap("fresh", "pilotnet_small/v0002", "v0002", 1200, 0.8, at=90.0)
            rejection = Rejection("v0003", "weights truncated", at=95.0)
            served.status.put(
                snapshot(frames=5, unstucks=2, swaps=(swap,), rejections=(rejection,))
            )
            event = events.event()
        finally:
            events.close()
    assert (event["seq"], event["state"], event["frames"]) == (1, "driving", 5)
    assert (event["model"], event["version"], event["batches"]) == (
        "pilotnet_small/v0002", "v0002", 1200,
    )  # fmt: skip
    assert event["console"] == {
        "throttle": None, "steering": 0.25, "stick_x": 0.0, "accelerate": 0.0, "brake": 0.0,
        "latency_ms": pytest.approx(20.0),
    }  # fmt: skip
    assert (event["swaps"], event["rejections"], event["unstucks"]) == (1, 1, 2)
    assert event["last_swap"] == {
        "from": "fresh", "to": "pilotnet_small/v0002", "version": "v0002", "batches": 1200,
        "load_seconds": 0.8, "seconds_ago": 10.0,
    }  # fmt: skip
    assert event["last_rejection"] == {
        "version": "v0003",
        "reason": "weights truncated",
        "seconds_ago": 5.0,
    }


def test_events_come_at_most_four_a_second_with_rates_on_the_servers_clock() -> None:
    clock = FakeClock()
    with serving(clock=clock) as served:
        clock.settle(waiters=1)  # the publisher's first look is done
        events = Stream(served.port, "/events")
        try:
            assert events.event()["seq"] == 0
            first_id = events.event_id
            assert first_id is not None
            for frames in (10, 20, 30):  # three snapshots within one period: one event
                served.status.put(snapshot(frames=frames, predictions=frames // 2))
            clock.advance(0.25)
            event = events.event()
            assert (event["seq"], event["frames"], event["fps"]) == (3, 30, 0.0)
            clock.advance(0.25)  # half a second since the first look: rates measured
            event = events.event()
            assert (event["seq"], event["fps"], event["pps"]) == (3, 60.0, 30.0)
            status = json.loads(request(served.port, "/status.json")[1])
            assert status["rates"] == {"fps": 60.0, "pps": 30.0}
            # The loop stops putting snapshots: the look at +0.25 s changes nothing (no event),
            # the one at +0.5 s measures nothing new, and the rates fall to zero.
            clock.advance(0.5)
            event = events.event()
            assert (event["seq"], event["fps"], event["pps"]) == (3, 0.0, 0.0)
            # Numbered as published: one event per change, none for a look that changed nothing.
            assert events.event_id == first_id + 3
        finally:
            events.close()


# --- the pictures ---------------------------------------------------------------------------


def test_mjpeg_pictures_decode_at_the_feeds_size_and_change() -> None:
    with serving() as served:
        feed = served.feeds["layout"]
        assert not feed.wanted
        reader = PictureReader(served.port)
        assert reader.stream.response.headers["Content-Type"] == CONTENT_TYPE
        assert wait_until(lambda: feed.wanted)
        assert not served.feeds["hud"].wanted  # only the kind someone watches is drawn
        for index in range(5):
            feed.put(picture(index))
            assert wait_until(lambda index=index: index in reader.indices(), IO_TIMEOUT)
        reader.stop()
        assert reader.error is None, reader.error
        assert reader.indices() == [0, 1, 2, 3, 4]
        levels = []
        for index, jpeg in reader.jpegs:
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape == (120, 160, 3)
            levels.append(float(image.mean()))
            assert abs(levels[-1] - picture(index).image.mean()) < 3.0
        assert len(set(round(level) for level in levels)) == 5  # each picture its own
        assert wait_until(lambda: not feed.wanted), "the feed is wanted after its viewer left"


def test_each_picture_is_encoded_once_however_many_viewers() -> None:
    with serving() as served:
        feed = served.feeds["layout"]
        readers = [PictureReader(served.port) for _ in range(3)]
        assert wait_until(lambda: served.server.counts.viewers == 3)
        for index in range(6):
            feed.put(picture(index))
            for reader in readers:
                assert wait_until(lambda r=reader, i=index: i in r.indices(), IO_TIMEOUT)
        counts = served.server.counts
        for reader in readers:
            reader.stop()
        assert (counts.pictures_encoded, counts.pictures_sent) == (6, 18)
        assert counts.pictures_skipped == 0


def test_a_slow_viewer_skips_to_the_newest_picture_when_it_reads_again() -> None:
    noise = np.random.default_rng(3).integers(0, 256, (2, 720, 1280, 3), dtype=np.uint8)
    with serving() as served:
        feed = served.feeds["layout"]
        viewer = stalled_viewer(served.port, "/layout.mjpeg", http="1.0")
        assert wait_until(lambda: feed.wanted)
        puts = 40
        for index in range(puts):
            feed.put(Picture(noise[index % 2], index, index, 0.0))
            time.sleep(0.01)  # a drawing thread's pace, not a wait
        reader = viewer.makefile("rb")
        status_line = reader.readline()
        assert status_line.split()[1] == b"200", status_line
        received: list[int] = []
        while len(received) < puts and puts - 1 not in received:
            received.append(read_raw_part(reader)[0])
        counts = served.server.counts  # while it still watches
        reader.close()
        viewer.close()
    # It took what its socket held, then the newest: never a backlog of every picture.
    assert received[-1] == puts - 1, received
    assert len(received) <= puts // 2, received
    assert counts.pictures_skipped >= counts.pictures_encoded - len(received) - 1, counts


def test_a_stalled_viewer_misses_pictures_alone_and_holds_no_more_memory() -> None:
    """One viewer connects and never reads; another reads. The reader gets every newest
    picture, `put` never waits, and the server's send buffers and the process's memory stay
    small while far more picture bytes are offered to the stalled viewer than that."""
    shape = (720, 1280, 3)
    noise = np.random.default_rng(7).integers(0, 256, (4, *shape), dtype=np.uint8)
    with serving() as served:
        feed = served.feeds["layout"]
        stalled = stalled_viewer(served.port, "/layout.mjpeg")
        assert wait_until(lambda: feed.wanted)
        reader = PictureReader(served.port, keep=1)
        assert wait_until(lambda: served.server.counts.viewers == 2)
        memory_before = resident_bytes()
        largest_put = largest_buffer = 0.0
        puts = 0
        # At least 120 pictures, and on until 20 were encoded and read (a loaded machine
        # encoded 4 of the first 120): the memory check needs that many offered.
        give_up = time.monotonic() + 60
        while puts < 120 or (
            min(served.server.counts.pictures_encoded, len(reader.indices())) < 20
            and time.monotonic() < give_up
        ):
            start = time.perf_counter()
            feed.put(Picture(noise[puts % 4], puts, puts, 0.0))
            largest_put = max(largest_put, time.perf_counter() - start)
            if puts % 10 == 0:
                largest_buffer = max(largest_buffer, served.server.counts.buffered_bytes)
            puts += 1
            time.sleep(0.01)  # a drawing thread's pace (~100 pictures a second), not a wait
        # The reader gets the newest picture, however far behind the stalled viewer is.
        assert wait_until(lambda: puts - 1 in reader.indices(), IO_TIMEOUT), reader.indices()
        counts = served.server.counts
        memory_growth = resident_bytes() - memory_before
        reader.stop()
        started = time.monotonic()
        served.server.stop()  # with the stalled viewer still connected
        stopping = time.monotonic() - started
        stalled.close()
        final = served.server.counts
    part_size = len(reader.jpegs[-1][1])
    offered = counts.pictures_encoded * part_size  # what an unbounded queue would hold
    assert counts.pictures_encoded >= 20 and offered >= 12_000_000, (counts, part_size)
    assert max(largest_buffer, counts.buffered_bytes) < 4 * part_size, (largest_buffer, counts)
    assert memory_growth < offered / 2, f"memory grew {memory_growth} of {offered} offered"
    assert largest_put < 0.25, f"put took {largest_put:.3f} s"
    assert reader.error is None and len(reader.received) >= 20
    # The stalled viewer took a few pictures before its socket filled and missed the rest,
    # counted when it went (it joined before the first picture, give or take one).
    stalled_sent = final.pictures_sent - len(reader.received)
    assert stalled_sent <= 10, final
    stalled_missed = final.pictures_encoded - stalled_sent
    assert stalled_missed - 1 <= final.pictures_skipped <= 2 * final.pictures_encoded, final
    # Bounded however the viewers behave; aiohttp alone would wait for the stalled one's
    # handler (SHUTDOWN_SECONDS) and then for its cancellation (as long again).
    assert stopping < 1.5, f"stop took {stopping:.1f} s with a stalled viewer"
