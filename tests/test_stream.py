"""The stream sender against a real RTMP ingest (FFmpeg's listen mode, in a process of its own):
what arrives, what happens when the ingest goes away and comes back or hangs, the waits between
attempts (on a fake clock), and that the stream key shows nowhere."""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from agent.config.schema import StreamConfig
from agent.errors import ConfigError
from agent.record.pictures import Picture, PictureFeed
from agent.stream.backoff import Backoff
from agent.stream.sender import StreamSender, StreamTimeouts
from agent.stream.target import (
    KEY_VARIABLE,
    check_stream_settings,
    redact_url,
    stream_target,
)
from tests.helpers.clock import FakeClock
from tests.helpers.rtmp import RtmpListener, free_port, stamp_index
from tests.helpers.waiting import wait_until

FPS = 20
SIZE = (320, 180)
KEY = "live_8675309_SeCrEtStReAmKeY"
"""A stream key that must never be seen, given in the environment."""
ENVIRON = {KEY_VARIABLE: KEY}


class Feeder:
    """The drawing thread's part: a picture per video clock slot at FPS, real time, with a
    scene cut every 5 slots (x264 would put a keyframe there if scene cuts were on), and every
    `skip`-th slot left undrawn (the sender must keep true time across the gap)."""

    def __init__(self, feed: PictureFeed, skip: int = 0) -> None:
        self.feed = feed
        self.skip = skip
        self.index = 0
        """The newest slot of the video clock."""
        self.last_put = 0
        """The newest slot drawn (put)."""
        self.slowest_put = 0.0
        rng = np.random.default_rng(7)
        self._scenes = [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), np.uint8) for _ in range(2)]
        self.put(0)

    def put(self, index: int) -> None:
        image = self._scenes[index // 5 % 2].copy()
        stamp_index(image, index)
        started = time.perf_counter()
        self.feed.put(Picture(image, index, index, time.monotonic()))
        self.last_put = index
        self.slowest_put = max(self.slowest_put, time.perf_counter() - started)

    def run_for(self, seconds: float, until: threading.Event | None = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until is not None and until.is_set()):
            time.sleep(1 / FPS)
            self.index += 1
            if not (self.skip and self.index % self.skip == 0):
                self.put(self.index)


@pytest.fixture
def listener() -> Iterator[RtmpListener]:
    listener = RtmpListener(free_port())
    yield listener
    listener.kill()


def sender_to(url: str, feed: PictureFeed, **kwargs: object) -> StreamSender:
    config = StreamConfig(url=url, bitrate_kbps=800, keyframe_seconds=1.0)
    return StreamSender(config, feed, FPS, environ=ENVIRON, **kwargs)  # type: ignore[arg-type]


def no_key_in(text: str) -> bool:
    return KEY not in text and "SeCrEt" not in text


def test_the_ingest_gets_the_pictures_at_true_time_with_steady_keyframes_and_audio(
    listener: RtmpListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    listener.wait_listening()
    feed = PictureFeed("layout")
    feeder = Feeder(feed, skip=4)
    with sender_to(f"rtmp://127.0.0.1:{listener.port}/live", feed) as sender:
        assert wait_until(lambda: feed.wanted)  # the drawing thread draws for the stream
        assert wait_until(lambda: sender.report().pictures_sent > 0, 30)
        feeder.run_for(3.0)
    assert not feed.wanted
    report = sender.report()
    assert listener.wait_ended(10)

    frames = listener.frames
    # Every picture sent arrived (one in flight when stopping may arrive uncounted).
    assert report.pictures_sent >= 40
    assert report.pictures_sent <= len(frames) <= report.pictures_sent + 1
    assert {(f.width, f.height) for f in frames} == {SIZE}
    assert listener.streams["audio"] == ["aac", 48000, 2] and listener.audio_packets > 0
    # Each picture at its slot's time: the gaps of undrawn and dropped slots are kept.
    first = frames[0]
    assert [f.ms - first.ms for f in frames] == [
        pytest.approx((f.index - first.index) * 1000 / FPS, abs=1) for f in frames
    ]
    assert any(b.index - a.index > 1 for a, b in itertools.pairwise(frames))
    # A keyframe first, then one a second (20 slots), none at the scene cuts between.
    keys = [f for f in frames if f.keyframe]
    assert keys[0] == first and len(keys) >= 3
    for a, b in itertools.pairwise(keys):
        assert 20 <= b.index - a.index <= 23
    # Every slot from the first picture to the last is sent or counted as dropped.
    assert report.pictures_sent + report.pictures_dropped == feeder.last_put + 1
    assert report.reconnects == 0 and report.failures == 0 and report.last_error is None
    assert 2.5 < report.seconds_connected < 10 and not report.connected
    assert no_key_in(caplog.text) and no_key_in(repr(report))


def test_when_the_ingest_goes_away_the_stream_comes_back_and_feeding_never_waits(
    listener: RtmpListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    listener.wait_listening()
    feed = PictureFeed("layout")
    feeder = Feeder(feed)
    with sender_to(f"rtmp://127.0.0.1:{listener.port}/live", feed) as sender:
        assert wait_until(lambda: sender.report().pictures_sent > 0, 30)
        feeder.run_for(1.0)
        assert listener.wait_for(10, 5)
        listener.kill()
        killed = time.monotonic()
        feeder.run_for(2.0)
        assert sender.report().failures >= 1 and not sender.report().connected
        back = RtmpListener(listener.port)
        try:
            back.wait_listening()
            arrived = threading.Event()
            threading.Thread(target=lambda: back.wait_for(1, 20) and arrived.set()).start()
            feeder.run_for(20.0, until=arrived)
            assert arrived.is_set(), "the stream did not come back"
            resumed_after = time.monotonic() - killed
            feeder.run_for(0.5)
        finally:
            sender.stop()
            back.kill()
    report = sender.report()
    print(f"the stream was back {resumed_after:.1f} s after the ingest went away")
    assert resumed_after < 10  # 1 s, then 2 s between attempts, and the listener's start
    assert report.reconnects == 1 and report.failures >= 2  # the break, and >= 1 refusal
    # The new connection starts with a keyframe at its own time zero.
    assert back.frames[0].keyframe and back.frames[0].ms < 100
    # What was drawn while the ingest was away is counted as dropped.
    assert report.pictures_dropped >= 1.5 * FPS
    assert report.pictures_sent + report.pictures_dropped == feeder.last_put + 1
    assert feeder.slowest_put < 0.05  # put never waited for the stream
    assert report.last_error and "refused" in report.last_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the break, and the refusals once however many
    assert "is back (reconnect 1)" in caplog.text
    assert no_key_in(caplog.text) and no_key_in(repr(report))


def test_the_waits_between_attempts_double_up_to_30_s_on_the_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock(settle_timeout=30.0)
    feed = PictureFeed("layout")
    Feeder(feed)
    # Nobody listens there: each attempt is refused at once, without a network.
    with sender_to(f"rtmp://127.0.0.1:{free_port()}/live", feed, clock=clock) as sender:
        clock.settle(waiters=1)
        assert sender.report().failures == 1
        for wait in (1, 2, 4, 8, 16, 30, 30):
            clock.advance(wait - 0.25)  # quarters: exact in floating point
            failures = sender.report().failures
            clock.advance(0.25)
            assert sender.report().failures == failures + 1, f"the {wait} s wait"
    report = sender.report()
    assert report.reconnects == 0 and report.seconds_connected == 0 and report.pictures_sent == 0
    assert report.pictures_dropped == 1  # the one picture drawn never went out
    assert report.last_error and report.last_error.startswith("Connection refused")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "trying again in 1 s" in warnings[0].getMessage()
    assert no_key_in(caplog.text) and no_key_in(repr(report)) and no_key_in(repr(sender))


def test_an_ingest_that_hangs_is_let_go_and_stop_returns_at_once() -> None:
    """A server that accepts connections and never answers: PyAV would wait for ever."""
    hangs = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                accepted.append(hangs.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    feed = PictureFeed("layout")
    Feeder(feed)
    timeouts = StreamTimeouts(connect=1.0)
    url = f"rtmp://127.0.0.1:{hangs.getsockname()[1]}/live"
    sender = sender_to(url, feed, timeouts=timeouts, backoff=Backoff(first=0.1)).start()
    try:
        # The first connection hangs in the handshake and is given up after 1 s; the next
        # attempt hangs too.
        assert wait_until(lambda: len(accepted) == 2, 30)
        report = sender.report()
        assert report.failures == 1 and not report.connected
        assert report.last_error == "the ingest did not answer within 1 s (connect)"
        started = time.monotonic()
        sender.stop()
        assert time.monotonic() - started < 1.5
        # The stream processes that held the connections are gone.
        assert all(closed(connection) for connection in accepted)
    finally:
        sender.stop()
        hangs.close()


def closed(connection: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the other end of `connection` closes it within `timeout` real seconds."""
    connection.settimeout(timeout)
    with contextlib.suppress(TimeoutError):
        while connection.recv(1 << 16):  # the RTMP handshake's first bytes, then the end
            pass
        return True
    return False


TELLTALE_STREAM_PROCESS = """
import json, sys
print(json.dumps({"ready": 1}), flush=True)
url = json.loads(sys.stdin.readline())["connect"]["url"]
print("Traceback: cannot publish to", url, file=sys.stderr, flush=True)
print(json.dumps({"failed": f"Server error: {url} refused", "kind": url}), flush=True)
sys.stdin.readline()
"""
"""A stream process that names the URL (key and all) in everything it says, as PyAV's errors
and FFmpeg's messages may: the drive's end must hide the key in all of it."""


def test_the_key_is_hidden_in_whatever_the_stream_process_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    feed = PictureFeed("layout")
    Feeder(feed)
    command = [sys.executable, "-c", TELLTALE_STREAM_PROCESS]
    sender = sender_to("rtmp://127.0.0.1:1/live", feed, command=command).start()
    try:
        assert wait_until(lambda: sender.report().failures >= 1, 30)
        assert wait_until(lambda: "cannot publish" in caplog.text)
    finally:
        sender.stop()
    report = sender.report()
    assert report.last_error == "Server error: rtmp://127.0.0.1:1/live/**** refused"
    assert "rtmp://127.0.0.1:1/live/**** refused" in caplog.text
    assert "cannot publish to rtmp://127.0.0.1:1/live/****" in caplog.text
    assert no_key_in(caplog.text) and no_key_in(repr(report))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtmp://a.rtmp.youtube.com/live2/SeCrEt-KeY", "rtmp://a.rtmp.youtube.com/live2/****"),
        ("rtmps://host:443/rtmp/SeCrEt?s_bl=1&x=2", "rtmps://host:443/rtmp/****"),
        ("rtmp://user:SeCrEt@host/app", "rtmp://****@host/****"),
        ("rtmp://host/SeCrEt", "rtmp://host/****"),
        ("rtmp://host/app/?SeCrEt", "rtmp://host/****"),
        ("rtmp://[::1]:1935/app/SeCrEt/more", "rtmp://[::1]:1935/app/****"),
        ("rtmp://host:SeCrEt/app", "rtmp://****"),
        ("rtmp://host", "rtmp://host"),
    ],
)
def test_a_url_is_shown_without_its_key(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    target = stream_target(StreamConfig(url=url), environ={})
    assert "SeCrEt" not in repr(target) and "SeCrEt" not in str(target)
    assert "SeCrEt" not in target.scrub(f"[Errno 111] Connection refused: '{url}'")


def test_the_key_from_the_environment_ends_the_url_and_is_hidden_everywhere() -> None:
    config = StreamConfig(url="rtmp://live.example.com/app/")
    target = stream_target(config, ENVIRON)
    assert target.url == f"rtmp://live.example.com/app/{KEY}"
    assert target.shown == "rtmp://live.example.com/app/****"
    assert KEY not in repr(target) and KEY not in str(target)
    assert target.scrub(f"Server error: {KEY} is not authorised") == (
        "Server error: **** is not authorised"
    )
    sender = StreamSender(config, PictureFeed("layout"), FPS, environ=ENVIRON)
    assert KEY not in repr(sender) and KEY not in repr(sender.report())
    assert sender.url == target.shown


@pytest.mark.parametrize(
    ("url", "environ", "says"),
    [
        ("", {}, "stream.url is empty"),
        ("http://host/app/SeCrEt", {}, "is not an rtmp:// or rtmps:// URL"),
        ("rtmp:host/app", {}, "is not an rtmp:// or rtmps:// URL"),
        ("srt://host:9000?streamid=SeCrEt", {}, "srt:// is not supported"),
        ("rtmp:///app/SeCrEt", {}, "names no host"),
        ("rtmp://host:port/app/SeCrEt", {}, "does not parse"),
        ("rtmp://host/app", {KEY_VARIABLE: "SeCrEt part2"}, "CHARLES_STREAM_KEY has spaces"),
    ],
)
def test_stream_settings_that_cannot_work_are_refused_in_one_line(
    url: str, environ: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=says) as refused:
        check_stream_settings(StreamConfig(url=url), environ)
    message = str(refused.value)
    assert "\n" not in message and "SeCrEt" not in message
    assert "rtmp://" in message or KEY_VARIABLE in message  # the fix names what works
    with pytest.raises(ConfigError):
        StreamSender(StreamConfig(url=url), PictureFeed("layout"), FPS, environ=environ)


def test_rtmps_is_accepted_because_pyav_has_tls() -> None:
    check_stream_settings(StreamConfig(url="rtmps://live-api-s.facebook.com:443/rtmp/"), ENVIRON)


def test_backoff_doubles_to_30_s_and_starts_again_after_a_healthy_connection() -> None:
    backoff = Backoff()
    assert [backoff.next_wait() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.connected_for(9.9)  # dropped soon after connecting: keep waiting long
    assert backoff.next_wait() == 30
    backoff.connected_for(10.0)
    assert [backoff.next_wait() for _ in range(3)] == [1, 2, 4]
