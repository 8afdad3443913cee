"""The live view during a real drive: `charles drive --live` drives the real bundled game while
a real headless browser (Debian's chromium, through Playwright) shows the overlay page, and
plain HTTP clients read the MJPEG pictures and the status, as OBS would."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from agent.game.channel import free_udp_port
from agent.live.mjpeg import BOUNDARY
from tests.helpers.charles import assert_one_line_error, run_charles_process
from tests.helpers.checkpoints import publish_driver
from tests.helpers.drives import Drive, drive_command, wait_until
from tests.test_drive import start_game, stop_game

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
"""Debian's chromium, which scripts/setup installs (Playwright's own download is not used)."""
TOKEN = "s3cret-for-the-test"


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        assert response.status == 200, response.status
        return json.loads(response.read())
    finally:
        connection.close()


def read_mjpeg(port: int, path: str, count: int) -> list[np.ndarray]:
    """The first `count` JPEG pictures of a multipart stream, decoded. A count, not a time:
    how many pictures a second a loaded machine draws is not what this checks."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", f"{path}?token={TOKEN}")
    response = connection.getresponse()
    assert response.status == 200
    assert BOUNDARY in response.getheader("Content-Type", "")
    pictures = []
    try:
        while len(pictures) < count:  # each read waits at most the connection's timeout
            length = None
            while True:  # the part's headers
                line = response.fp.readline().strip()
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if not line and length is not None:
                    break
            data = response.fp.read(length)
            pictures.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    finally:
        connection.close()
    return pictures


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class ReadingViewer:
    """A viewer that reads everything it is sent (and throws it away), on a thread."""

    def __init__(self, port: int, request: bytes) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port))
        self._socket.sendall(request)
        self.received = 0
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> ReadingViewer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(10.0)
        self._socket.close()
        assert self.received > 0, "the reading viewer got nothing"

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while data := self._socket.recv(1 << 16):
                self.received += len(data)


def pps_over(port: int, seconds: float, windows: int = 2) -> float:
    """Predictions per second over `seconds`: the best of `windows` equal windows in a row, each
    from two /status.json snapshots. A viewer that blocked the loop would slow every window;
    a neighbouring test's burst of CPU (CI runs two at once on 2 cores) slows one."""
    rates = []
    first = get_json(port, "/status.json")["status"]
    for _ in range(windows):
        time.sleep(seconds / windows)
        second = get_json(port, "/status.json")["status"]
        rates.append((second["predictions"] - first["predictions"]) / (second["at"] - first["at"]))
        first = second
    return max(rates)


def test_the_live_view_follows_a_real_drive_in_a_real_browser(
    x_display: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    game_port, live_port = free_udp_port(), free_tcp_port()
    telemetry = tmp_path / "telemetry.jsonl"
    game = start_game(game_port, telemetry, tmp_path)
    store = tmp_path / "models"
    publish_driver(store, 0.3, 0.0)  # v0001
    drive = Drive(
        drive_command(
            store, game_port, "--json", "--live", f"127.0.0.1:{live_port}",
            "--set", f"live.token={json.dumps(TOKEN)}", "--set", "swap.poll_seconds=0.2",
            "--set", "unstuck.enabled=false", "--set", "record.fps=15",
        ),
        tmp_path,
    )  # fmt: skip
    try:
        drive.wait_for_log("live view for OBS")
        drive.wait_for_log("following")
        # With a token, a request without it is refused.
        bare = http.client.HTTPConnection("127.0.0.1", live_port, timeout=10)
        bare.request("GET", "/status.json")
        assert bare.getresponse().status == 401
        bare.close()

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(f"http://127.0.0.1:{live_port}/?transparent=1&token={TOKEN}")
                page.wait_for_function(
                    "document.querySelector('#version').textContent.includes('v0001')",
                    timeout=30_000,
                )
                first = page.text_content("#pps")
                page.wait_for_function(
                    "(first) => document.querySelector('#pps').textContent !== first",
                    arg=first,
                    timeout=10_000,
                )  # the PPS changes with the page left alone: pushed, not a page load
                publish_driver(store, 0.3, 0.2)  # v0002, swapped in while the page is open
                page.wait_for_function(
                    "document.querySelector('#version').textContent.includes('v0002')",
                    timeout=30_000,
                )
                assert page.evaluate("document.body.classList.contains('transparent')")
            finally:
                browser.close()

        status = get_json(live_port, "/status.json")["status"]
        pictures = read_mjpeg(live_port, "/layout.mjpeg", 10)
        assert all(p is not None and p.shape == (720, 1280, 3) for p in pictures)
        assert any(not np.array_equal(pictures[0], p) for p in pictures[1:])  # the car moves
        later = get_json(live_port, "/status.json")["status"]
        assert later["predictions"] > status["predictions"] and later["frames"] > status["frames"]

        # A viewer that connects and never reads: the car drives on at the pace it has with a
        # viewer that reads (both cost the drawing of the layout, which a slow machine feels),
        # and the drive's memory does not grow with the pictures it is not taking.
        request = f"GET /layout.mjpeg?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with ReadingViewer(live_port, request.encode()) as reading:
            wait_until(lambda: reading.received > 0, 10, "pictures for a reading viewer")
            without = pps_over(live_port, 4.0)
        stalled = socket.create_connection(("127.0.0.1", live_port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(request.encode())
        time.sleep(2.0)  # its buffers fill
        memory_before = rss_bytes(drive.process.pid)
        with_stalled = pps_over(live_port, 4.0)
        memory_after = rss_bytes(drive.process.pid)
        stalled.close()
        assert with_stalled >= 0.85 * without, (without, with_stalled)
        assert memory_after - memory_before < 40_000_000, (memory_before, memory_after)

        drive.signal("SIGTERM")
        assert drive.finish() == 143, drive.stderr[-3000:]
    finally:
        if drive.process.poll() is None:
            drive.process.kill()
        stop_game(game)


def test_a_live_view_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    """One error line before anything starts: no game, no model, no window."""
    result = run_charles_process(
        "drive", "--store", str(tmp_path / "models"), "--live", "0.0.0.0:47999", cwd=tmp_path
    )
    assert_one_line_error(result, "'0.0.0.0:47999'", "[live] token")


def test_a_drive_streams_to_an_ingest_that_goes_away_and_comes_back(
    x_display: str, tmp_path: Path
) -> None:
    """`charles drive --stream`: the layout arrives at a real RTMP ingest (PyAV listening in
    its own process); the ingest is killed for 5 s and comes back: the stream resumes, the car
    never stopped, and the summary counts the reconnect without ever showing the key."""
    from tests.helpers.rtmp import RtmpListener

    game_port = free_udp_port()
    telemetry = tmp_path / "telemetry.jsonl"
    game = start_game(game_port, telemetry, tmp_path)
    store = tmp_path / "models"
    publish_driver(store, 0.3, 0.0)
    # The ingest listens long enough for a drive that starts slowly on a loaded machine.
    listener = RtmpListener(free_tcp_port(), timeout=600)
    listener.wait_listening()
    url = listener.url.rsplit("/", 1)[0]  # the key comes from the environment
    drive = Drive(
        drive_command(
            store, game_port, "--json", "--stream", url, "--set", "record.fps=15",
            "--set", "stream.bitrate_kbps=800", "--set", "unstuck.enabled=false",
        ),
        tmp_path,
        env={**os.environ, "CHARLES_STREAM_KEY": "test"},
    )  # fmt: skip
    back = None
    try:
        drive.wait_for_log("streaming the layout to")
        assert listener.wait_for(30, timeout=60), (
            f"{len(listener.frames)} pictures reached the ingest (it ended: {listener.ended}):\n"
            f"{drive.stderr[-3000:]}"
        )
        first = listener.frames[0]
        assert (first.width, first.height) == (1280, 720) and first.keyframe
        assert listener.streams.get("audio"), listener.streams  # the silent AAC track
        listener.kill()
        predictions_before = drive_predictions(telemetry)
        time.sleep(5.0)  # the ingest is away; the car drives on
        back = RtmpListener(listener.port, timeout=600)
        back.wait_listening()
        assert back.wait_for(15, timeout=40), "the stream did not come back"
        assert drive_predictions(telemetry) > predictions_before  # it never stopped driving
        drive.signal("SIGTERM")
        assert drive.finish() == 143, drive.stderr[-3000:]
    finally:
        if drive.process.poll() is None:
            drive.process.kill()
        listener.kill()
        if back is not None:
            back.kill()
        stop_game(game)
    stream = drive.summary()["stream"]
    assert stream["reconnects"] >= 1 and stream["pictures_sent"] >= 45, stream
    assert stream["url"].endswith("/****")
    assert "test" not in stream["url"].rsplit("/", 1)[1]
    assert "/live/test" not in drive.stderr and "/live/test" not in drive.stdout


def drive_predictions(telemetry: Path) -> int:
    """Game records applied from the gamepad so far: the car being driven."""
    count = 0
    for line in telemetry.read_text().splitlines():
        try:
            count += json.loads(line).get("source") == "gamepad"
        except ValueError:
            continue
    return count
