"""Recording while driving: a thread on the video clock, a writer thread, nothing in the loop.

The drive loop does not know a recording exists. It already offers each tick (frame, model
input, prediction with its Convcam, command) through a slot; the recorder's thread wakes at
every slot of the video clock, takes the newest captured frame and the newest tick (both
non-blocking reads), draws the picture and offers it to the writer's bounded queue (which drops,
never waits). Both threads run at a lower priority (record.nice), so on a busy machine the video
loses pictures (counted), not the car its predictions.

A recording starts and stops at any time (the record hotkey): each one is its own file, created
new on the writer thread under the first free name (`out.mp4`, `out-2.mp4`, ...): never over
another file, never through a link.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.config import RecordConfig
from agent.files import free_names
from agent.record.budget import GIGABYTE, RecordingBudget
from agent.record.clock import ShownFrames, VideoClock
from agent.record.hud import Status
from agent.record.layout import Composer, Panels
from agent.record.losses import LossCurve
from agent.record.pictures import Picture, PictureFeed
from agent.record.watched import picture_index
from agent.record.writer import (
    RecordingError,
    VideoOutput,
    VideoWriter,
    create_free,
    encoder_opens,
    refuse_link_or_special,
    require_av,
)
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.slot import Slot
from agent.runtime.threads import lower_this_threads_priority
from agent.types import Frame, Tick

log = logging.getLogger(__name__)

SLOT_BEFORE = 1e-6
"""A slot due exactly at the stop starts after the recording: the stop fills those before."""
WRITER_PATIENCE = 5.0
"""Seconds a stopped recording waits for its writer to empty its queue (a second of video,
encoded in well under a second unless the machine starves the niced writer)."""


@dataclass(frozen=True)
class RecordingReport:
    """One finished recording, for the drive summary."""

    path: str
    seconds: float
    """Length of the video (slots / fps): the wall time it covers."""
    frames: int
    """Slots of the video clock, each filled with a picture."""
    written: int
    """Pictures the encoder wrote (frames - dropped)."""
    repeated: int
    """Slots that showed the same captured frame again (capture slower than the video)."""
    left_out: int
    """Captured frames no slot showed (capture faster than the video)."""
    dropped: int
    """Pictures the writer's queue had no room for (encoder or disk too slow)."""
    encoder: str | None
    drawing_cpu_s: float
    """CPU seconds the clock thread spent drawing pictures."""
    encoding_cpu_s: float
    """CPU seconds the writer thread spent converting and encoding them."""
    error: str | None = None
    files: tuple[str, ...] = ()
    """Every file of the recording, `path` first: one per record.segment_minutes."""


def recording_names(folder: Path, requested: Path | None, number: int) -> Iterator[Path]:
    """The names recording `number` (1, 2, ...) of this session may take, in order: it takes
    the first that nothing has yet (a file, a folder, a link).

    No path: `folder/charles-<date>-<time>.mp4`, then `...-2.mp4` and so on. A folder: the same
    inside it. A file: that file for the first recording, `<stem>-2.mp4` and so on for the next
    ones (and past any name already taken).
    """
    if requested is None or requested.is_dir():
        base = requested if requested is not None else folder
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return free_names(base / f"charles-{stamp}.mp4")
    return free_names(requested, first=number)


def recording_path(folder: Path, requested: Path | None, number: int) -> Path:
    """The name recording `number` takes when it is free (see recording_names)."""
    return next(recording_names(folder, requested, number))


def check_recording_path(path: Path) -> None:
    """Refuse a path that is a link or not a file: the video would land somewhere else."""
    refuse_link_or_special(path, "--record")


def check_folder(folder: Path, shown: str, fix: str, named: Path) -> None:
    """Refuse a folder no video can be created in: not a folder (a file, /dev/null), or one
    this user cannot write (permissions, a read-only file system). A missing folder is made
    when the first recording starts, so the nearest folder that exists must be writable.
    `shown` names the setting and its value `named`; the line names the culprit too when it
    is another path (a parent folder)."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise RecordingError(f"{shown}: {existing} is a symbolic link to nothing; {fix}")
        if existing == existing.parent:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = shown if existing == named else f"{shown}: {existing}"
        raise RecordingError(f"{where} is not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = shown if existing == named else f"{shown}: {existing}"
        why = "is on a read-only file system" if _read_only(existing) else "is not writable"
        raise RecordingError(f"{where} {why}; {fix}")


def _read_only(folder: Path) -> bool:
    read_only = getattr(os, "ST_RDONLY", 0)
    return bool(read_only) and bool(os.statvfs(folder).f_flag & read_only)


def check_before_driving(config: RecordConfig, path: Path | None, from_the_start: bool) -> None:
    """What would stop a recording that starts with the drive, said before anything starts:
    no PyAV, a bad path, a folder that cannot take the video, an encoder asked for by name that
    does not open here."""
    if path is not None:
        check_recording_path(path)
    if not from_the_start:
        return
    if path is None:
        named = Path(config.folder)
        shown, fix = f"record.folder {named}", "set record.folder to a folder this user can write"
    else:
        named = path
        shown, fix = f"--record {path}", "give --record a path in a folder this user can write"
    check_folder(named if named.is_dir() or path is None else named.parent, shown, fix, named)
    require_av()
    if config.encoder != "auto" and not encoder_opens(config.encoder):
        raise RecordingError(
            f"record.encoder is {config.encoder!r} but it does not open on this machine (NVENC "
            'needs an NVIDIA GPU and its driver); set record.encoder = "auto" or "libx264"'
        )


class Recorder:
    """Starts and stops recordings during one drive; `close()` ends the last one.

    Each recording's video clock runs on `clock`: its slots are that clock's seconds. Each
    picture a recording draws also goes to the feed of its kind in `feeds` (the live view and
    the stream show it), indexed on the drive's video clock from `epoch`.
    """

    def __init__(
        self,
        config: RecordConfig,
        frames: Slot[Frame],
        ticks: Slot[Tick],
        status: Callable[[], Status],
        capture_size: tuple[int, int],
        convcam_layer: str,
        losses: LossCurve | None = None,
        path: Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
        feeds: Mapping[str, PictureFeed] | None = None,
        epoch: float | None = None,
    ) -> None:
        self.config = config
        self._frames = frames
        self._ticks = ticks
        self._status = status
        self._capture_size = capture_size
        self._convcam_layer = convcam_layer
        self._losses = losses
        self._path = path
        self._clock = clock
        self._feed = (feeds or {}).get(config.mode)
        self.epoch = clock.now() if epoch is None else epoch
        self._lock = threading.Lock()
        self._budgets: dict[Path, RecordingBudget] = {}
        self._current: _Recording | None = None
        self._finished: list[_Recording] = []
        if path is not None:
            check_recording_path(path)

    @property
    def recording(self) -> bool:
        """Whether a recording runs (one its writer stopped, e.g. on a full disk, does not)."""
        with self._lock:  # the drive loop asks while the hotkey's thread may start or stop one
            current = self._current
        return current is not None and not current.writer.failed.is_set()

    def draws(self, kind: str) -> bool:
        """Whether a running recording draws the pictures of `kind` ("layout" or "hud")."""
        return kind == self.config.mode and self.recording

    def start(self) -> bool:
        """Start a new recording; False (and nothing done) when one is running already.

        Its file is created by its writer thread ("recording to PATH" is logged then), so a
        slow disk never delays the caller (the hotkey's thread)."""
        with self._lock:
            current = self._current
            if current is not None and not current.writer.failed.is_set():
                return False
            if current is not None:  # it stopped itself on an error: a new one may start
                self._finished.append(current)
                current.stop()
            number = len(self._finished) + 1
            names = recording_names(Path(self.config.folder), self._path, number)
            composer = Composer(
                self.config.mode, self._capture_size, self.config.hud, self.config.convcam
            )
            self._current = _Recording(
                names, self.config, composer, self._frames, self._ticks, self._status,
                Panels(convcam_layer=self._convcam_layer), self._losses, self._clock,
                self._feed, self.epoch, self._file_finished,
            )  # fmt: skip
        return True

    def _file_finished(self, path: Path) -> None:
        """A file of a recording is finished (on its writer thread): into the ledger of its
        folder, and the oldest recordings there deleted while over record.keep_gb."""
        folder = path.parent
        with self._lock:
            budget = self._budgets.get(folder)
            if budget is None:
                keep = round(self.config.keep_gb * GIGABYTE)
                budget = self._budgets[folder] = RecordingBudget(folder, keep)
        budget.finished(path)

    @property
    def deleted(self) -> list[str]:
        """Recordings deleted to keep record.keep_gb, oldest first."""
        with self._lock:
            return [name for budget in self._budgets.values() for name in budget.deleted]

    def stop(self) -> None:
        """End the running recording; its file is finished on its own thread."""
        with self._lock:
            current, self._current = self._current, None
            if current is None:
                return
            self._finished.append(current)
        current.stop()
        if not current.writer.failed.is_set():  # a failed one said so already, in one line
            log.info("recording stopped after %.1f s: %s", current.clock.seconds, current.path)

    def toggle(self) -> None:
        """The record hotkey."""
        if self.recording:
            self.stop()
        else:
            self.start()

    def close(self) -> list[RecordingReport]:
        """Stop recording, wait for every file to be finished, and report them all."""
        self.stop()
        with self._lock:
            finished = list(self._finished)
        return [recording.finish() for recording in finished]


class _Recording:
    """One file: the clock thread drawing pictures, and its writer."""

    def __init__(
        self,
        names: Iterator[Path],
        config: RecordConfig,
        composer: Composer,
        frames: Slot[Frame],
        ticks: Slot[Tick],
        status: Callable[[], Status],
        panels: Panels,
        losses: LossCurve | None,
        clock: Clock,
        feed: PictureFeed | None = None,
        epoch: float = 0.0,
        file_finished: Callable[[Path], None] | None = None,
    ) -> None:
        self._names = names
        self.asked = next(names)
        """The name this recording takes unless something already has it."""
        self._config = config
        self._composer = composer
        self._frames = frames
        self._ticks = ticks
        self._status = status
        self._panels = panels
        self._losses = losses if config.mode == "layout" else None
        self._feed = feed
        self._epoch = epoch
        self.writer = VideoWriter(
            self._create_file, config.fps, config.encoder, nice=config.nice,
            segment_pictures=round(config.segment_minutes * 60 * config.fps),
            finished=file_finished,
        )  # fmt: skip
        self._time = clock
        """The time the video clock's slots are on (real time, but for tests)."""
        self.clock = VideoClock(config.fps, clock.now())
        self.shown = ShownFrames()
        self.error: BaseException | None = None
        self.drawing_cpu = 0.0
        self._stopping = threading.Event()
        self._stopped_at: float | None = None
        """When the recording was stopped: its last slot's time."""
        self._thread = threading.Thread(target=self._run, name="video-clock", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path:
        """The (first) file: `asked`, or the next free name when that was taken."""
        return self.writer.paths[0] if self.writer.paths else self.asked

    def _create_file(self) -> VideoOutput:
        """Called by the writer thread with the first picture: the first free name."""
        output = create_free(itertools.chain([self.asked], self._names))
        taken = f"{self.asked} exists; " if output.path != self.asked else ""
        log.info(
            "%srecording to %s (%s mode, %d fps)",
            taken, output.path, self._config.mode, self._config.fps,
        )  # fmt: skip
        return output

    def stop(self) -> None:
        if self._stopped_at is None:
            self._stopped_at = self._time.now()
        self._stopping.set()

    def finish(self) -> RecordingReport:
        """Wait for the file to be finished (the clock thread closes it) and report."""
        self.stop()
        self._thread.join(timeout=3 * WRITER_PATIENCE)
        error = self.error or self.writer.error
        counts = self.writer.counts
        return RecordingReport(
            path=str(self.path),
            seconds=round(self.clock.seconds, 3),
            frames=self.shown.shown,
            written=counts.written,
            repeated=self.shown.repeated,
            left_out=self.shown.left_out,
            dropped=counts.dropped,
            encoder=self.writer.encoder_used,
            drawing_cpu_s=round(self.drawing_cpu, 3),
            encoding_cpu_s=round(counts.cpu_seconds, 3),
            error=str(error) if error is not None else None,
            files=tuple(str(path) for path in self.writer.paths),
        )

    def _run(self) -> None:
        lower_this_threads_priority(self._config.nice)
        cpu_start = time.thread_time()
        try:
            while not self._time.wait(self._stopping, self.clock.next_at() - self._time.now()):
                if self.writer.failed.is_set():
                    break  # it said why; drawing on would only cost the car CPU
                slots = self.clock.due(self._time.now())
                if not slots:
                    continue
                self._fill(slots)
            # The slots before the stop that a thread the machine starved (it runs niced)
            # had not reached: the video lasts as long as the recording did.
            stopped_at = self._time.now() if self._stopped_at is None else self._stopped_at
            last = self.clock.due(stopped_at - SLOT_BEFORE)
            if last and not self.writer.failed.is_set():
                self._fill(last)
        except BaseException as error:  # a bug in drawing must not stop the car
            self.error = error
            log.error("recording to %s stopped: %s", self.path, error, exc_info=True)
        finally:
            self.drawing_cpu = time.thread_time() - cpu_start
            # Finished here, not by whoever stopped it: the hotkey's thread must not wait.
            # A starved writer gets WRITER_PATIENCE for its queue, then as long to finish the
            # file without it, within finish()'s wait.
            self.writer.close(timeout=WRITER_PATIENCE)

    def _fill(self, slots: range) -> None:
        frame, seq = self._frames.get()
        if seq == self.shown.last_seq:
            # Capture and video run at about the same rate on two clocks: without this short
            # wait, jitter at the phase boundary shows one frame twice and leaves the next out.
            frame, seq = self._frames.wait_newer(seq, timeout=0.5 / self._config.fps)
        tick, _ = self._ticks.get()
        panels = self._panels
        if self._losses is not None:
            panels = Panels(panels.convcam_layer, tuple(self._losses.points(self._time.now())))
        picture = self._composer.compose(frame, tick, self._status(), panels)
        self.shown.show(seq, len(slots))
        for index in slots:
            self.writer.offer(picture, index)
        if self._feed is not None:
            now = self._time.now()
            index = picture_index(now, self._epoch, self._config.fps)
            self._feed.put(Picture(picture, index, seq, now))
