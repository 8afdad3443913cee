"""Render-to-command latency on the bundled game: from the picture a command was computed from
being shown to the game's physics first applying that command.

The drive loop tags each command with the capture sequence number of its frame (the pad packet
carries it, `agent.game.channel`) and notes it here with the frame's capture time. The game says
in its frame records which tag its physics applied and since when (`FrameRecord.tag_since`: the
physics tick whose poll first read it). The picture the command was computed from is known from
the frame number stamped into its pixels (game run with `--stamp`), or else paired by capture
time (`FrameRecordListener.record_for`). Latency = tag_since - shown_at of that picture. Both
are this machine's time.monotonic() (the game is local; the channel is loopback only).

How far off it can be:
- Applied side: none to speak of. tag_since is when the physics tick that first used the
  command polled the pad; a command waits in the socket for up to 1/PHYSICS_HZ (20 ms) before
  that poll, and that wait is part of the latency, not an error.
- Shown side: shown_at is taken right after `pygame.display.flip()` returns. The pixels are up
  a little before that, and a grab can read them before the time is taken (seen on Xvfb, by
  about 0.1 ms): a stamped picture is then taken as shown at its capture time instead, which
  it surely was by then.
- Which picture: with the stamp, exact. Paired by capture time, a picture that went up while
  the grab was being read (captured_at is taken when the grab ends) is taken for the grabbed
  one although the grab may have read the one before: the latency then comes out one display
  interval (1/fps, 33 ms at 30 fps) short; and a grab that read a picture before the game took
  its shown_at (above) is paired with the picture before, one interval long. On this project's
  2-core test machine under Xvfb, time pairing named another picture than the stamp for 33 of
  2011 commands (1.6%; fifteen 5 s drives, idle and with both cores kept busy), always by one
  picture, mostly the newer one. They bunch: most drives had none, one had 14 of 151, as the
  grab and draw clocks drift in and out of step (tests/test_render_latency.py measures it
  against the stamp; `charles bench pairing` measures the same pairing for collection).
- Not measured at all: a command replaced by a newer one before the game drew a picture with
  it applied (two commands within one draw interval) never appears in a record. It is counted
  (`superseded`), not guessed, so the percentiles describe the commands that reached a picture.
  With grabs and pictures both at 30 a second on the game's 50 Hz tick grid, that was none of
  the commands in some drives and a third of them in others, depending on how the two clocks
  happened to be phased.
- A pause, or a person at the keys, between a command and its first picture counts into its
  latency (the game applies it only when the pad drives again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from agent.drive.summary import ShownToCommand, percentiles_ms
from agent.game.channel import FrameRecord
from agent.game.pairing import KEPT_RECORDS, FrameRecordListener
from agent.game.stamp import BITS, CELL, read_stamp
from agent.runtime.ring import FloatRing

log = logging.getLogger(__name__)

KEPT_LATENCIES = 200_000
"""Like the drive loop's own latency record: about two hours of commands at 30 a second."""
KEPT_MATCHES = 1_000
"""The most recent matches kept whole (`recent`), to inspect or test."""
FLIP_SLACK = 0.05
"""Seconds a grab may end before the game's shown_at of the picture it stamped-read: the
pixels are up before flip() returns. Any more means a misread stamp."""
GIVE_UP_SECONDS = 5.0
"""A noted command not seen applied this long after its capture is counted `unseen`: the
controller's dead-man lets go of any command within a second or so."""
_STAMP_MASK = (1 << BITS) - 1
_NO_STAMP = -1
"""A grab too small to hold a stamp: no picture has this number."""


@dataclass(frozen=True)
class Match:
    """One command timed from its picture to the physics."""

    tag: int
    frame: int
    """The game's frame number of the picture the command was computed from."""
    shown_at: float
    captured_at: float
    applied_at: float
    """The game's tag_since: the physics tick that first applied the command."""

    @property
    def latency(self) -> float:
        return self.applied_at - self.shown_at


@dataclass(frozen=True)
class _Note:
    tag: int
    captured_at: float
    stamp: int | None


class RenderToCommand:
    """Times each noted command on the bundled game on `port` (see the module docstring).

    `note()` runs on the drive loop's thread and only queues; the matching runs on the frame
    record listener's thread. Counters (written there, read anywhere):
    `records`, `noted`, `matched`, `superseded` (replaced before any picture showed it
    applied), `unpaired` (its picture is not among the game's recent records, its stamp names
    none shown by the capture, or its tag did not grow), `unseen` (never seen applied: given up
    after GIVE_UP_SECONDS, or still waiting at `close()`).

    `stamped`: the game runs with `--stamp` and each noted image's top-left corner holds the
    stamp (a 16:9 window; another shape letterboxes the picture, and its stamps are unread).
    """

    def __init__(self, port: int, stamped: bool = False) -> None:
        self.stamped = stamped
        self.latencies = FloatRing(KEPT_LATENCIES)
        """Seconds from picture shown to command applied, oldest first."""
        self.recent: deque[Match] = deque(maxlen=KEPT_MATCHES)
        self.records = 0
        """Frame records taken in from the game so far."""
        self.noted = 0
        self.matched = 0
        self.superseded = 0
        self.unpaired = 0
        self.unseen = 0
        self._notes: deque[_Note] = deque()  # drive loop -> listener thread (append is atomic)
        # Listener thread only: notes and first sightings waiting for each other, tags growing.
        self._waiting: deque[_Note] = deque()
        self._applied: deque[tuple[int, float]] = deque(maxlen=64)
        self._last_tag = 0
        self._last_noted = 0
        self._shown: dict[int, tuple[int, float]] = {}
        self._lock = threading.Lock()  # guards latencies and recent for readers
        self._failed = False
        self._listener = FrameRecordListener(port, on_record=self._on_record)

    def __enter__(self) -> RenderToCommand:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def note(self, tag: int, captured_at: float, image: np.ndarray) -> None:
        """The command computed from capture `tag` (captured at `captured_at`, pixels `image`)
        has just been sent. Tags must grow from one note to the next (capture sequence numbers
        do). Cheap: reads the stamp (16 pixels) when stamped, queues, returns."""
        stamp = None
        if self.stamped:
            height, width = image.shape[:2]
            stamp = read_stamp(image) if height >= CELL and width >= BITS * CELL else _NO_STAMP
        self._notes.append(_Note(tag, captured_at, stamp))
        self.noted += 1

    def wait_for_records(self, timeout: float = 5.0) -> bool:
        """Whether the game's frame records arrive (the first within `timeout` seconds):
        before they do, nothing can be timed."""
        deadline = time.monotonic() + timeout
        while self._listener.newest() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def unmatched(self) -> int:
        """Noted commands that got no latency: superseded, unpaired or unseen."""
        return self.superseded + self.unpaired + self.unseen

    def percentiles_ms(self, points: Sequence[float] = (50, 95, 99)) -> list[float | None]:
        """The latency at each percentile in `points`, in milliseconds; None while none."""
        with self._lock:
            seconds = self.latencies.array()
        return percentiles_ms(seconds, points)

    def report(self) -> ShownToCommand:
        """Stop listening (commands still waiting for a picture count as unseen) and report."""
        self.close()
        p50, p95, p99 = self.percentiles_ms((50, 95, 99))
        # The listener's thread has ended: its counts no longer change.
        return ShownToCommand(
            p50, p95, p99, self.matched, self.noted, self.superseded, self.unpaired, self.unseen,
            "stamped" if self.stamped else "paired by capture time",
        )  # fmt: skip

    def describe(self) -> str:
        p50, p95, p99 = self.percentiles_ms((50, 95, 99))
        if p50 is None:
            timed = "no command timed"
        else:
            timed = f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms"
        how = "stamped pictures" if self.stamped else "pictures paired by capture time"
        return (
            f"render-to-command latency ({how}): {timed}; {self.matched} of {self.noted} "
            f"commands timed, {self.superseded} replaced before a picture showed them, "
            f"{self.unpaired} without their picture, {self.unseen} never seen applied"
        )

    def close(self) -> None:
        """Stop listening; commands still waiting count as unseen. Idempotent."""
        self._listener.close()
        while self._notes:
            self._waiting.append(self._notes.popleft())
        self.unseen += len(self._waiting)
        self._waiting.clear()

    # --- the listener's thread ------------------------------------------------------------

    def _on_record(self, record: FrameRecord) -> None:
        try:
            self._take(record)
        except Exception:  # a bug here must not end the listener: the drive goes on, untimed
            if not self._failed:
                log.exception("render-to-command latency: a frame record could not be matched")
            self._failed = True

    def _take(self, record: FrameRecord) -> None:
        if self.stamped:
            self._remember_shown(record)
        self._take_notes()
        # Only a tag's first picture counts: tag_since is the same in all of them anyway.
        if record.tag and record.tag != self._last_tag:
            self._applied.append((record.tag, record.tag_since))
        if record.tag:
            self._last_tag = record.tag
        self._match()
        while self._waiting and record.shown_at - self._waiting[0].captured_at > GIVE_UP_SECONDS:
            self._waiting.popleft()
            self.unseen += 1
        self.records += 1  # last: a reader that sees the count sees the record's effects

    def _take_notes(self) -> None:
        while self._notes:
            note = self._notes.popleft()
            if note.tag <= self._last_noted:
                self.unpaired += 1  # tags must grow; this one cannot be told apart
                continue
            self._last_noted = note.tag
            self._waiting.append(note)

    def _match(self) -> None:
        """Merge the two tag-ordered queues: notes and first sightings of applied tags."""
        while self._waiting and self._applied:
            note = self._waiting[0]
            tag, applied_at = self._applied[0]
            if not applied_at >= note.captured_at:  # NaN, or applied before this capture
                self._applied.popleft()  # an older command (another drive's, or unnoted)
            elif tag == note.tag:
                self._waiting.popleft()
                self._applied.popleft()
                self._measure(note, applied_at)
            elif tag > note.tag:
                self._waiting.popleft()  # a newer command reached the physics first
                self.superseded += 1
            else:
                self._applied.popleft()  # a command that was never noted

    def _measure(self, note: _Note, applied_at: float) -> None:
        picture = self._picture(note)
        if picture is None:
            self.unpaired += 1
            return
        frame, shown_at = picture
        match = Match(note.tag, frame, shown_at, note.captured_at, applied_at)
        with self._lock:
            self.latencies.append(match.latency)
            self.recent.append(match)
        self.matched += 1

    def _picture(self, note: _Note) -> tuple[int, float] | None:
        """The frame number and shown_at of the picture `note` was computed from."""
        if note.stamp is None:
            record = self._listener.record_for(note.captured_at)
            return None if record is None else (record.frame, record.shown_at)
        shown = self._shown.get(note.stamp)
        # A misread stamp names a picture shown well after the grab, or none at all.
        if shown is None or shown[1] > note.captured_at + FLIP_SLACK:
            return None
        frame, shown_at = shown
        return frame, min(shown_at, note.captured_at)

    def _remember_shown(self, record: FrameRecord) -> None:
        self._shown[record.frame & _STAMP_MASK] = (record.frame, record.shown_at)
        while len(self._shown) > KEPT_RECORDS:
            del self._shown[next(iter(self._shown))]
