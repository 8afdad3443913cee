"""The live view: a local read-only HTTP server for OBS, in a thread beside the drive.

Why aiohttp: it is the well-kept asyncio HTTP server for Python, and it does everything here
with one event loop in one thread: endless streaming
responses (MJPEG, Server-Sent Events) whose writes wait for a slow socket to drain instead
of buffering without limit, cancellation of a handler when its viewer goes away, and a bounded
shutdown. The standard library's http.server would need a thread per viewer and has no
back-pressure, and a framework with its own process model (uvicorn) does not sit quietly in a
thread of the drive.

Nothing here changes anything: every route is GET, reads snapshots (the status slot, the
newest tick, the picture feeds, the loss curve) and never writes to the drive.

Endpoints
- `GET /`: the overlay page for an OBS Browser Source (agent/live/overlay.html);
  `?transparent=1` drops its background, to lay it over a game capture. With a token, open
  `/?token=SECRET`: the page passes the token on to `/events`.
- `GET /events`: Server-Sent Events. On connect, the newest event; then one whenever
  something the page shows changes, at most four a second. Each is one line `data: {JSON}`
  (preceded by `id: N`) with these fields:
    seq            status snapshot's sequence number (0: no snapshot yet)
    state          "starting", "driving", "paused", "waiting for window", "unstuck"
    model          display name of the model driving (null before the first snapshot)
    version        store version driving, e.g. "v0003" (null: fresh weights)
    batches        batches that checkpoint was trained for (null: fresh weights)
    fps, pps       frames captured / predictions per second, on the server's clock
    frames, predictions, unstucks   counts since the drive started
    swaps          checkpoints that took over; last_swap: {from, to, version, batches,
                   load_seconds, seconds_ago} or null
    rejections     checkpoints refused; last_rejection: {version, reason, seconds_ago} or null
    console        {throttle, steering (raw prediction, [-1, 1]), stick_x ([-1, 1]),
                   accelerate, brake ([0, 1]), latency_ms} or null before the first tick;
                   a non-finite prediction is null
    losses         the trainer's loss curve: [[batches, total loss], ...], oldest first
  A comment line (": still here") every KEEPALIVE_SECONDS keeps idle connections open.
- `GET /status.json`: {"seq", "status": every DriveStatus field (null before the first
  snapshot), "rates": {"fps", "pps"}}.
- `GET /layout.mjpeg`, `GET /hud.mjpeg` (one per picture feed): multipart/x-mixed-replace
  JPEG streams; each part has Content-Length and X-Picture-Index (the video clock's index).

Page element ids (stable; the browser test reads them): OVERLAY_ELEMENT_IDS below.

Security: loopback by default, and then only requests whose Host is a loopback name or
address are answered (a web page the user visits cannot reach the view by rebinding its own
name to 127.0.0.1). Any other address needs `[live] token`, and every request must carry it
(`?token=...` or `Authorization: Bearer ...`), else 401. At most `max_viewers` streaming
connections at once (MJPEG and events), else 503; other methods get 405.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hmac
import importlib.resources
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from types import TracebackType

from aiohttp import web

from agent.config.schema import LiveConfig
from agent.drive.status import DriveStatus
from agent.errors import CharlesError, log_failure, one_line
from agent.live.address import check_live_settings, is_loopback, url_host
from agent.live.documents import status_document, to_json
from agent.live.mjpeg import CONTENT_TYPE, JpegChannel
from agent.live.newest import NewestValue
from agent.live.publisher import LossCurve, OverlayPublisher
from agent.record.pictures import PictureFeed
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.slot import Slot
from agent.runtime.threads import lower_this_threads_priority
from agent.types import Tick

log = logging.getLogger(__name__)

OVERLAY_ELEMENT_IDS = (
    "connection",  # "live" while events arrive, "reconnecting" while not
    "state", "model", "version", "batches", "pps", "fps",
    "throttle", "steering",  # raw prediction
    "stick-x", "accelerate", "brake", "latency",  # controller values, capture->command
    "swaps", "last-swap", "rejections", "last-rejection", "unstucks",
    "losses",  # the <canvas> the loss curve is drawn on
    "loss-last",  # the newest point as text: "N batches: LOSS"
)  # fmt: skip
"""Ids of the overlay page's elements, each showing the event field of (nearly) its name."""

NICE = 10
"""Scheduling niceness of the server's threads: the live view yields the CPU to the car."""
KEEPALIVE_SECONDS = 15.0
SHUTDOWN_SECONDS = 1.0
"""Real seconds aiohttp gives a handler to end before it is cancelled, when stopping."""
START_SECONDS = 10.0
STOP_SECONDS = 5.0
"""Real seconds `stop` waits for the server's thread (shutdown, then the picture workers)."""
COUNT_SECONDS = 2.0
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
PAGE = "overlay.html"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class LiveCounts:
    """What the live view did, for the drive summary."""

    viewers: int
    """Streaming connections served (pictures and overlay events)."""
    refused: int
    """Streaming connections refused because `max_viewers` were streaming."""
    unauthorized: int
    """Requests refused for a missing or wrong token (or a foreign Host on loopback)."""
    pictures_sent: int
    """JPEG pictures sent, all viewers together."""
    pictures_skipped: int
    """Pictures a viewer missed because it had not taken the one before (slow viewers)."""
    pictures_encoded: int
    """Pictures encoded: once each, however many viewers."""
    buffered_bytes: int
    """Bytes waiting in the server's send buffers now (0 once stopped)."""


@dataclass
class _Tally:
    """Counters the event loop's thread alone changes."""

    viewers: int = 0
    refused: int = 0
    unauthorized: int = 0
    pictures_sent: int = 0
    pictures_skipped: int = 0


class LiveServer:
    """Serves the live view from its own thread and event loop while a drive runs.

    `status` is the drive loop's status slot; `ticks` (optional) its tick slot, for the
    player console's raw prediction and controller values; `pictures` the picture feeds by
    name ("layout", "hud"), each served at /NAME.mjpeg; `losses` returns the trainer's loss
    curve and is called from the server's thread up to four times a second.
    """

    def __init__(
        self,
        config: LiveConfig,
        status: Slot[DriveStatus],
        pictures: Mapping[str, PictureFeed],
        losses: LossCurve | None = None,
        clock: Clock = SYSTEM_CLOCK,
        ticks: Slot[Tick] | None = None,
    ) -> None:
        self.config = config
        self._host, self._port = check_live_settings(config)
        self._status = status
        self._feeds = dict(pictures)
        self._page = importlib.resources.files("agent.live").joinpath(PAGE).read_text("utf-8")
        self._tally = _Tally()
        self._final_counts: LiveCounts | None = None
        self._workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, len(self._feeds)),
            thread_name_prefix="live pictures",
            initializer=lower_this_threads_priority,
            initargs=(NICE,),
        )
        self._publisher = OverlayPublisher(
            status, ticks, losses, self._deliver_event, clock, nice=NICE
        )
        self._thread = threading.Thread(target=self._serve, name="live server", daemon=True)
        self._started = threading.Event()
        self._start_failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Made on the event loop's thread (_open), used only there:
        self._events: NewestValue[str] | None = None
        self._channels: dict[str, JpegChannel] = {}
        self._streaming: dict[int, web.Request] = {}
        """The streaming connections' requests by id (a request is a mapping: unhashable)."""
        self._runner: web.AppRunner | None = None
        self.url = ""
        """http://HOST:PORT/ once started."""

    def start(self) -> str:
        """Listen and serve; returns the page's URL. CharlesError (one line) when the address
        cannot be listened on."""
        if self._thread.ident is not None:
            raise RuntimeError("a LiveServer starts once")
        self._thread.start()
        if not self._started.wait(START_SECONDS):
            raise CharlesError(f"the live view did not start within {START_SECONDS:.0f} s")
        if self._start_failure is not None:
            self._thread.join(STOP_SECONDS)
            raise self._start_failure
        self._publisher.start()
        return self.url

    def stop(self) -> None:
        """Close every connection and end the server's threads (within about STOP_SECONDS)."""
        self._publisher.stop()  # first: it hands events to the loop
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(loop.stop)
            self._thread.join(STOP_SECONDS)
        self._workers.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def counts(self) -> LiveCounts:
        """What the server has done so far (safe from any thread, also after `stop`)."""
        loop = self._loop
        if self._final_counts is None and loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._count_now(), loop)
            try:
                return future.result(COUNT_SECONDS)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                future.cancel()  # stopping meanwhile: the final counts follow below
        return self._final_counts or self._count(buffered=False)

    # --- the server's own thread -------------------------------------------------------

    def _serve(self) -> None:
        lower_this_threads_priority(NICE)
        loop = asyncio.new_event_loop()
        try:
            try:
                loop.run_until_complete(self._open())
            except BaseException as error:
                self._start_failure = error
                return
            finally:
                self._loop = loop
                self._started.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
        except Exception as error:
            log_failure(log, "the live view stopped", error)
        finally:
            _cancel_leftovers(loop)
            loop.close()
            self._workers.shutdown(wait=True)

    async def _open(self) -> None:
        self._events = NewestValue()
        quality = self.config.jpeg_quality
        self._channels = {
            name: JpegChannel(feed, quality, self._workers) for name, feed in self._feeds.items()
        }
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._overlay_page, allow_head=False)
        app.router.add_get("/events", self._event_stream, allow_head=False)
        app.router.add_get("/status.json", self._status_json, allow_head=False)
        for name, channel in self._channels.items():
            stream = partial(self._picture_stream, channel)
            app.router.add_get(f"/{name}.mjpeg", stream, allow_head=False)
        runner = web.AppRunner(
            app,
            access_log=None,  # a request's URL may hold the token: never log it
            handler_cancellation=True,  # a viewer that goes away stops watching at once
            shutdown_timeout=SHUTDOWN_SECONDS,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise _cannot_listen(self._host, self._port, error) from None
        self._runner = runner
        port = runner.addresses[0][1]
        self.url = f"http://{url_host(self._host)}:{port}/"

    async def _close(self) -> None:
        self._final_counts = self._count(buffered=False)
        if self._events is not None:
            self._events.close()
        for channel in self._channels.values():
            await channel.close()
        await asyncio.sleep(0)  # the streams that were waiting for a value end now
        for request in list(self._streaming.values()):
            # A viewer that stopped reading waits for its socket to drain, never to end.
            if request.transport is not None:
                request.transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
        self._final_counts = self._count(buffered=False)

    # --- on the event loop ------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The token when one is set; else a loopback Host (see the module's docstring)."""
        if self.config.token:
            if not self._carries_token(request):
                self._tally.unauthorized += 1
                raise web.HTTPUnauthorized(
                    text="this live view needs its token: add ?token=SECRET to the URL\n",
                    headers={"WWW-Authenticate": 'Bearer realm="charles live view"'},
                )
        elif not is_loopback(request.url.host or ""):
            self._tally.unauthorized += 1
            raise web.HTTPForbidden(text=f"open this live view as {self.url}\n")
        return await handler(request)

    def _carries_token(self, request: web.Request) -> bool:
        expected = self.config.token.encode("utf-8")
        given = request.query.get("token")
        if given is None:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(given.encode("utf-8"), expected)

    async def _overlay_page(self, request: web.Request) -> web.Response:
        page = self._page
        if request.query.get("transparent") in ("1", "true", "yes"):
            page = page.replace("<body>", '<body class="transparent">', 1)
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)

    async def _status_json(self, request: web.Request) -> web.Response:
        status, seq = self._status.get()
        document = status_document(status, seq, self._publisher.rates)
        return web.Response(text=to_json(document), content_type="application/json",
                            headers=NO_STORE)  # fmt: skip

    async def _event_stream(self, request: web.Request) -> web.StreamResponse:
        assert self._events is not None
        with self._admitted(request):
            response = web.StreamResponse(
                headers={**NO_STORE, "Content-Type": "text/event-stream; charset=utf-8"}
            )
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")  # EventSource: reconnect after 2 s
            seen = 0
            while True:
                try:
                    newest = await asyncio.wait_for(
                        self._events.wait_newer(seen), KEEPALIVE_SECONDS
                    )
                except asyncio.TimeoutError:
                    await response.write(b": still here\n\n")
                    continue
                if newest is None:
                    return response
                text, seen = newest
                await response.write(f"id: {seen}\ndata: {text}\n\n".encode())

    async def _picture_stream(
        self, channel: JpegChannel, request: web.Request
    ) -> web.StreamResponse:
        with self._admitted(request), channel.viewing() as parts:
            response = web.StreamResponse(headers={**NO_STORE, "Content-Type": CONTENT_TYPE})
            await response.prepare(request)
            sent = 0
            try:
                while (newest := await parts.wait_newer(sent)) is not None:
                    part, seq = newest
                    if sent:
                        self._tally.pictures_skipped += seq - sent - 1
                    # Returns once the socket has room again: until then this viewer takes
                    # no newer part, and the parts it misses are dropped, not queued.
                    await response.write(part)
                    self._tally.pictures_sent += 1
                    sent = seq
            finally:
                if sent:  # what a viewer stuck in a write until it left has missed
                    self._tally.pictures_skipped += parts.get()[1] - sent
            return response

    @contextlib.contextmanager
    def _admitted(self, request: web.Request) -> Iterator[None]:
        """One streaming connection, within max_viewers (else 503)."""
        if len(self._streaming) >= self.config.max_viewers:
            self._tally.refused += 1
            raise web.HTTPServiceUnavailable(
                text=f"{self.config.max_viewers} viewers are watching already (the most "
                f"[live] max_viewers allows); close one or raise max_viewers\n",
                headers={"Retry-After": "5"},
            )
        self._tally.viewers += 1
        self._streaming[id(request)] = request
        try:
            yield
        finally:
            del self._streaming[id(request)]

    async def _count_now(self) -> LiveCounts:
        return self._count(buffered=True)

    def _count(self, buffered: bool) -> LiveCounts:
        waiting = 0
        if buffered:
            for request in self._streaming.values():
                if request.transport is not None:
                    waiting += request.transport.get_write_buffer_size()
        tally = self._tally
        return LiveCounts(
            viewers=tally.viewers,
            refused=tally.refused,
            unauthorized=tally.unauthorized,
            pictures_sent=tally.pictures_sent,
            pictures_skipped=tally.pictures_skipped,
            pictures_encoded=sum(channel.encoded for channel in self._channels.values()),
            buffered_bytes=waiting,
        )

    # --- from the publisher's thread --------------------------------------------------

    def _deliver_event(self, text: str) -> None:
        loop, events = self._loop, self._events
        if loop is not None and events is not None:
            loop.call_soon_threadsafe(events.put, text)


def _cannot_listen(host: str, port: int, error: OSError) -> CharlesError:
    """One line for a failed bind: what the address was, why, and what to do."""
    where = f"{url_host(host)}:{port}"
    code = error.errno
    if code in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None)):
        why = "the port is in use (another Charles or another program); stop it or pick another"
    elif code in (errno.EADDRNOTAVAIL, getattr(errno, "WSAEADDRNOTAVAIL", None)):
        why = "this machine has no such address; use 127.0.0.1, or 0.0.0.0 for every interface"
    elif code in (errno.EACCES, getattr(errno, "WSAEACCES", None)):
        why = "not allowed to listen there (ports below 1024 need administrator rights)"
    elif isinstance(error, socket.gaierror):
        why = "no such host; use an address such as 127.0.0.1"
    else:
        why = one_line(error.strerror or error)
    return CharlesError(
        f"the live view cannot listen on {where}: {why} ([live] address or --live HOST:PORT)"
    )


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """End the tasks still running on `loop` (a viewer's handler aiohttp did not end)."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
