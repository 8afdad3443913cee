"""Pictures drawn for watchers (the live view, the stream) while no recording draws them.

A recording draws its pictures on its own video clock and hands each one to the feed of its
kind as well (agent/record/recorder.py), so a kind being recorded is never drawn twice. This
thread draws the other kinds, and only while somebody watches them: a live view nobody has open
and no stream cost the car nothing. It runs at the recording's lower priority, on the same
video clock rate, and skips slots it is late for rather than catching up (a viewer wants the
newest picture, not every one). While the model sets the drive's pace (a big model on a CPU)
and only the live view watches (a stream is a video: it gets a picture every slot), it draws
at most `live.model_bound_fps` pictures a second: measured with model_0005 on 2 cores, two
live viewers cost 10% of PPS at 30 pictures a second (2.5% at 10), although the thread is
niced (the model's threads are not always busy; the drawing fills their gaps and takes memory
bandwidth and cache from the next prediction).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

from agent.config import RecordConfig
from agent.record.hud import Status
from agent.record.layout import Composer, Panels
from agent.record.losses import LossCurve
from agent.record.pictures import Picture, PictureFeed
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.slot import Slot
from agent.runtime.threads import lower_this_threads_priority
from agent.types import Frame, Tick

log = logging.getLogger(__name__)

IDLE_LOOK_SECONDS = 0.1
"""How often an idle drawer looks whether somebody started watching."""
RETRY_SECONDS = (1.0, 60.0)
"""After a picture fails to draw, the pause before the next try: the first, doubled after each
failure in a row up to the second. A stream runs for days: one bad picture (a bug met by one odd
frame or status) must not leave the audience a frozen picture for the rest of the drive, and a
picture that fails every time must not fill the log."""
MODEL_BOUND_SHARE = 0.8
"""The model, not the game, sets the drive's pace when it predicts fewer times a second than
this share of capture.fps (a big model on a CPU): every millisecond of CPU drawing takes is then
a prediction later. (Not the measured capture rate: a capture that follows the model grabs
little more than the model asks for.)"""


def model_bound(status: Status, capture_fps: float) -> bool:
    """Whether the drive predicts (it does: PPS known) at well under the capture's rate."""
    return 0 < status.pps < MODEL_BOUND_SHARE * capture_fps


def slot_step(status: Status, fps: int, model_bound_fps: int, capture_fps: float) -> int:
    """Video clock slots from one watched picture to the next: every slot, or while the model
    sets the pace, enough of them to draw at most `model_bound_fps` a second (0: every slot)."""
    if model_bound_fps <= 0 or not model_bound(status, capture_fps):
        return 1
    return max(1, math.ceil(fps / model_bound_fps))


def picture_index(now: float, epoch: float, fps: int) -> int:
    """The video-clock slot of time `now`, counted from `epoch` (shared by every drawer of a
    drive, so the pictures of one feed have rising indexes whoever drew them)."""
    return max(0, math.floor((now - epoch) * fps + 1e-9))


class WatchedPictures:
    """The drawing thread for watched kinds of picture that no recording draws."""

    def __init__(
        self,
        config: RecordConfig,
        feeds: Mapping[str, PictureFeed],
        frames: Slot[Frame],
        ticks: Slot[Tick],
        status: Callable[[], Status],
        capture_size: tuple[int, int],
        convcam_layer: str,
        recorded: Callable[[str], bool],
        losses: LossCurve | None = None,
        epoch: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        model_bound_fps: int = 0,
        capture_fps: float = 30.0,
    ) -> None:
        self._config = config
        self._model_bound_fps = model_bound_fps
        self._capture_fps = capture_fps
        self._feeds = dict(feeds)
        self._frames = frames
        self._ticks = ticks
        self._status = status
        self._recorded = recorded
        self._losses = losses
        self._clock = clock
        self.epoch = clock.now() if epoch is None else epoch
        self._composers = {
            kind: Composer(kind, capture_size, config.hud, config.convcam) for kind in self._feeds
        }
        self._panels = Panels(convcam_layer=convcam_layer)
        self.drawn = 0
        """Pictures drawn (all kinds)."""
        self.drawing_cpu = 0.0
        self.error: BaseException | None = None
        """The last error, if any (drawing is tried again after it; see RETRY_SECONDS)."""
        self.failures = 0
        """Pictures that failed to draw, in all."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watched-pictures", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def wanted(self) -> list[str]:
        """The kinds somebody watches that no recording draws."""
        return [
            kind for kind, feed in self._feeds.items() if feed.wanted and not self._recorded(kind)
        ]

    def _run(self) -> None:
        lower_this_threads_priority(self._config.nice)
        cpu_start = time.thread_time()
        fps = self._config.fps
        try:
            last, step, failures = -1, 1, 0
            while not self._stopping.is_set():
                kinds = self.wanted()
                if not kinds:
                    self._clock.wait(self._stopping, IDLE_LOOK_SECONDS)
                    continue
                now = self._clock.now()
                index = picture_index(now, self.epoch, fps)
                if index < last + step:
                    next_at = self.epoch + (last + step) / fps
                    self._clock.wait(self._stopping, next_at - now)
                    continue
                last = index
                try:
                    status = self._draw(kinds, index, now)
                except Exception as error:  # a bug in drawing must not stop the car
                    failures += 1
                    self.error, self.failures = error, self.failures + 1
                    pause = min(RETRY_SECONDS[0] * 2 ** min(failures - 1, 16), RETRY_SECONDS[1])
                    log.error(
                        "drawing pictures for the live view failed (%d in a row): %s; "
                        "trying again in %.0f s", failures, error, pause,
                        exc_info=failures == 1,
                    )  # fmt: skip
                    self._clock.wait(self._stopping, pause)
                    continue
                if failures:
                    log.info("drawing pictures for the live view again after %d failures", failures)
                    failures = 0
                every_slot = any(self._feeds[kind].wants_every_slot for kind in kinds)
                new_step = (
                    1
                    if every_slot
                    else slot_step(status, fps, self._model_bound_fps, self._capture_fps)
                )
                if new_step != step:
                    log.info(
                        "live pictures: %.0f a second (the model predicts %.1f times a second, "
                        "the capture is set to %g)", fps / new_step, status.pps, self._capture_fps,
                    )  # fmt: skip
                    step = new_step
        except BaseException as error:  # a bug in this thread must not stop the car
            self.error = error
            log.error("drawing pictures for the live view stopped: %s", error, exc_info=True)
        finally:
            self.drawing_cpu = time.thread_time() - cpu_start

    def _draw(self, kinds: list[str], index: int, now: float) -> Status:
        """Draws one picture of each kind for slot `index`; the status they showed."""
        frame, seq = self._frames.get()
        tick, _ = self._ticks.get()
        status = self._status()
        for kind in kinds:
            panels = self._panels
            if kind == "layout" and self._losses is not None:
                panels = Panels(panels.convcam_layer, tuple(self._losses.points(now)))
            image = self._composers[kind].compose(frame, tick, status, panels)
            self._feeds[kind].put(Picture(image, index, seq, now))
            self.drawn += 1
        return status
