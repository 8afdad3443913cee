"""The capture thread: grabs the game window at a fixed rate into a newest-value slot.

Frames are never queued: each grab replaces the previous one in the slot, so the drive loop
always sees the newest picture and a slow consumer simply skips frames.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from agent.capture.screen import explain_display_loss, open_mss, screen_bounds
from agent.capture.window import GameWindow, WindowError, clip_to
from agent.errors import log_failure
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.liveness import Failures
from agent.runtime.ratekeeper import RateKeeper
from agent.runtime.ring import FloatRing
from agent.runtime.slot import Slot
from agent.types import Frame, Region

log = logging.getLogger(__name__)

PART = "capture"
"""How the capture's failure is named in the session's Failures."""

CAPTURING = "capturing"
WINDOW_LOST = "window lost"
STOPPED = "stopped"
FAILED = "failed"
FOLLOW_SECONDS = 1.0
"""How long a request to grab only on request holds: the fixed rate resumes after it, so the
window is still looked at when the drive loop pauses or stops asking."""


class Grabber:
    """Captures `window` at `fps` frames a second on its own thread into `frames`.

    - `window_lost` is set while the window is gone, minimised or off the screen: no frames
      are put then, and the window is looked for again (by its title) every `reacquire_every`
      seconds; it is cleared with the first frame after the window is back. `window_gone()`
      says the window is gone before the capture would see it (its game has ended).
    - An unexpected exception ends the thread and is reported to `failures` (the session's;
      its own when none is given) and shown by `error` (never swallowed).
    - Frames' images are read-only BGRA arrays (height, width, 4), one new array per grab,
      so a consumer may keep a frame while later ones arrive.
    - `request_frame()` makes the next grab happen now instead of at the next tick: a drive
      loop whose model is slower than the capture rate asks for a fresh picture the moment a
      prediction ends, instead of taking one up to a period old. With `only_on_request`, the
      grabs between requests are left out too (for up to FOLLOW_SECONDS, then the fixed rate
      resumes): nobody would look at them, and on a small machine each grab delays the
      prediction running beside it.
    - The schedule (the rate, following, looking for a lost window) and the frames' times are
      kept on `clock`.
    """

    def __init__(
        self,
        window: GameWindow,
        fps: float,
        frames: Slot[Frame],
        *,
        region_every: float = 0.25,
        reacquire_every: float = 0.5,
        black_after: float = 2.0,
        failures: Failures | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.window = window
        self.fps = fps
        self.frames = frames
        self.window_lost = threading.Event()
        self._failures = failures if failures is not None else Failures()
        self.frames_grabbed = 0
        self.measured_fps = 0.0
        """Frames put per second over the last second or so."""
        self.lagged = 0
        """Ticks the capture ran more than one period late (grabs slower than `fps`)."""
        self.lost_reason: str | None = None
        """Why the window was last lost (the WindowError message)."""
        self._region_every = region_every
        self._reacquire_every = reacquire_every
        self._black_after = black_after
        self._clock = clock
        self._stopping = threading.Event()
        self._wake = threading.Event()
        """Ends the wait between grabs: a request, the end of following, or stop()."""
        self._requests = threading.Lock()
        """Guards the drive loop's requests (below), written by its thread, read by this one."""
        self._grab_now = False
        self._follow_until = 0.0
        self._gone: str | None = None
        """Why the window is gone, told by `window_gone` and not yet acted on."""
        self.grab_seconds = FloatRing()
        """Seconds each grab took (the screen copy and its array), the newest ~2 hours."""
        self.requested = 0
        """Grabs made early because the drive loop asked for a fresh frame."""
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    @property
    def error(self) -> BaseException | None:
        """The error that ended the capture thread, if one did."""
        return self._failures.of(PART)

    @property
    def state(self) -> str:
        """One of "capturing", "window lost", "stopped", "failed"."""
        if self.error is not None:
            return FAILED
        if not self._thread.is_alive():
            return STOPPED
        return WINDOW_LOST if self.window_lost.is_set() else CAPTURING

    def start(self) -> None:
        self._thread.start()

    def request_frame(self, only_on_request: bool = False) -> None:
        """Grab now rather than at the next tick (never blocks); with `only_on_request`, grab
        next when asked again, or after FOLLOW_SECONDS if nobody asks."""
        follow_until = self._clock.now() + FOLLOW_SECONDS if only_on_request else 0.0
        with self._requests:
            self._follow_until = follow_until
            self._grab_now = True
        self._wake.set()

    def stop_following(self) -> None:
        """Back to the fixed rate now (the model became fast): without this, a fast model
        after one slow prediction would wait up to FOLLOW_SECONDS for its next frame. Cheap
        when not following."""
        with self._requests:
            if not self._follow_until:
                return
            self._follow_until = 0.0
        self._wake.set()

    def window_gone(self, reason: str) -> None:
        """The window is gone (its game ended): stop grabbing and look for it again now, not
        at the next read of its region. Never blocks; any thread."""
        with self._requests:
            self._gone = reason
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end and wait for it (at most `timeout` plus one frame period)."""
        self._stopping.set()
        self._wake.set()  # wakes a grabber waiting for the drive loop's request
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout + 1.0 / self.fps)

    def _run(self) -> None:
        try:
            with open_mss() as sct:
                self._capture(sct)
        except BaseException as error:
            explained = explain_display_loss(error)
            self._failures.report(PART, explained)
            log_failure(log, "capture stopped", explained)

    def _capture(self, sct: Any) -> None:
        screen = screen_bounds(sct)
        keeper = RateKeeper(self.fps, self._clock)
        region: Region | None = None
        region_read_at = 0.0
        seq = 0
        meter_start, meter_frames = self._clock.now(), 0
        black_since: float | None = None
        black_warned = False
        try:
            while not self._stopping.is_set():
                now = self._clock.now()
                gone = self._take_gone()
                if gone is not None or region is None or now - region_read_at >= self._region_every:
                    try:
                        if gone is not None:
                            # Not one more grab: a picture of the ended game must not be driven on.
                            raise WindowError(gone)
                        region = self._visible_region(screen)
                    except WindowError as error:
                        self._lose(error)
                        if not self._wait_for_window():
                            return
                        region, keeper = None, self._new_keeper(keeper)
                        continue
                    region_read_at = now
                grab_started = time.perf_counter()  # what a grab costs: real time, always
                shot = sct.grab(
                    {"left": region.left, "top": region.top,
                     "width": region.width, "height": region.height}
                )  # fmt: skip
                captured_at = self._clock.now()
                image = np.frombuffer(shot.raw, dtype=np.uint8).reshape(shot.height, shot.width, 4)
                image.flags.writeable = False
                self.grab_seconds.append(time.perf_counter() - grab_started)
                seq += 1
                self.frames.put(Frame(image, captured_at, seq, region))
                self.frames_grabbed += 1
                if self.window_lost.is_set():
                    self.window_lost.clear()
                    log.info("capturing %r again", self.window.title)

                meter_frames += 1
                if captured_at - meter_start >= 1.0:
                    self.measured_fps = meter_frames / (captured_at - meter_start)
                    meter_start, meter_frames = captured_at, 0
                if _is_black(image):
                    black_since = captured_at if black_since is None else black_since
                    if not black_warned and captured_at - black_since > self._black_after:
                        black_warned = True
                        log.warning(
                            "every captured frame of %r has been black for %.0f s: the game "
                            "may run in exclusive fullscreen or draw through an overlay that "
                            "screen capture cannot see; run it windowed or borderless",
                            self.window.title, self._black_after,
                        )  # fmt: skip
                else:
                    black_since = None
                keeper = self._wait_for_next_grab(keeper)
        finally:
            self.lagged += keeper.lagged

    def _wait_for_next_grab(self, keeper: RateKeeper) -> RateKeeper:
        """Until the next grab is due: the next tick, or a request, or (following a slow
        model) its next request, or FOLLOW_SECONDS without one. `stop_following` ends the
        following and the wait goes on to the next tick."""
        while not self._stopping.is_set():
            with self._requests:
                follow_until = self._follow_until
            follow = follow_until - self._clock.now()
            if follow > 0:
                # A slow model is driving: the next frame it wants is the one it asks for.
                woken = self._clock.wait(self._wake, follow)
                keeper = self._new_keeper(keeper)
            else:
                keeper.keep_time(self._wake)
                woken = self._wake.is_set()
            self._wake.clear()
            with self._requests:
                grab_now, self._grab_now = self._grab_now, False
                gone = self._gone is not None
            if grab_now:
                self.requested += 1
                return keeper
            if not woken or gone:
                return keeper  # the tick (or the end of following) is due, or the window went
        return keeper

    def _visible_region(self, screen: Region) -> Region:
        region = self.window.region()
        visible = clip_to(region, screen)
        if visible is None:
            raise WindowError(f"the game window {self.window.title!r} is off the screen")
        if visible != region:
            log.debug("capturing the on-screen part %s of %s", visible, region)
        return visible

    def _lose(self, error: WindowError) -> None:
        self.lost_reason = str(error)
        self.window_lost.set()
        log.warning("%s; waiting for it to come back", error)

    def _wait_for_window(self) -> bool:
        """Look for the window until it is back (True) or the grabber is stopped (False)."""
        while not self._clock.wait(self._stopping, self._reacquire_every):
            self._take_gone()  # told the window is gone while looking for it: nothing new
            try:
                self.window.reacquire()
                self.window.region()
            except WindowError as error:
                self.lost_reason = str(error)
                continue
            log.info("found the game window %r again", self.window.title)
            return True
        return False

    def _take_gone(self) -> str | None:
        with self._requests:
            gone, self._gone = self._gone, None
        return gone

    def _new_keeper(self, old: RateKeeper) -> RateKeeper:
        # A fresh schedule after the wait, so the pause is not counted as lag.
        self.lagged += old.lagged
        return RateKeeper(self.fps, self._clock)


def _is_black(image: np.ndarray) -> bool:
    # A sparse sample is enough to tell a black frame from a game picture, at ~1/64 the cost.
    return not image[::8, ::8, :3].any()
