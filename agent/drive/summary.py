"""The end-of-run report of `charles drive`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.checkpoints.watcher import Rejection
from agent.drive.hotswap import Swap
from agent.game.telemetry import TelemetryRecord
from agent.record.recorder import RecordingReport
from agent.stream.sender import StreamReport


@dataclass(frozen=True)
class CommandGaps:
    """Gaps between successive commands from predictions, split by whether a swap was under way
    (see `command_gaps`)."""

    count: int
    median_ms: float
    """Median gap outside swaps (over all gaps when every gap overlapped one)."""
    largest_outside_ms: float | None
    during_swaps: int
    """Gaps that overlapped a background load or the instant of a switch."""
    largest_during_ms: float | None
    pps_during: float | None
    """Commands per second while loads ran (1 / mean gap)."""
    pps_outside: float | None


@dataclass(frozen=True)
class LiveRow:
    """What the live view served (agent.live.server.LiveCounts, without the moment's buffers)."""

    viewers: int
    refused: int
    unauthorized: int
    pictures_sent: int
    pictures_skipped: int
    """Pictures slow viewers missed (they get the newest one when they are ready)."""
    pictures_encoded: int


@dataclass(frozen=True)
class ShownToCommand:
    """Bundled game: the game showing a picture -> its physics applying the command computed
    from it (agent/drive/latency.py says what each count means)."""

    p50: float | None
    p95: float | None
    p99: float | None
    matched: int
    noted: int
    superseded: int
    unpaired: int
    unseen: int
    pictures: str
    """"stamped" or "paired by capture time"."""


@dataclass(frozen=True)
class SwapRow:
    """One checkpoint that took over, timed from the start of driving."""

    from_name: str
    to_name: str
    version: str
    batches: int
    load_s: float
    """Loading and checking it in the background: the time the car did NOT wait."""
    at_s: float


@dataclass(frozen=True)
class RejectionRow:
    """One checkpoint refused, timed from the start of driving."""

    version: str
    reason: str
    at_s: float


@dataclass(frozen=True)
class DriveSummary:
    """The end-of-run report (times in seconds, rates per second, latencies in ms)."""

    model: str
    """The model driving at the end (after any swaps)."""
    started_with: str
    controller: str
    window: str
    stopped_by: str
    seconds: float
    frames: int
    predictions: int
    fps: float
    pps: float
    latency_p50_ms: float | None
    """Capture -> command sent, median over the predictions sent."""
    latency_p95_ms: float | None
    predict_p50_ms: float | None
    """The predictor's own time per frame, median: the part of the latency the model takes."""
    skipped_frames: int
    """Frames captured while a prediction ran, never predicted on (a newer one was)."""
    nonfinite_predictions: int
    deadman_releases: int
    """Times the controller went neutral by itself because no command came for controller.hold."""
    game: TelemetryRecord | None
    """The bundled game's last telemetry sample (score, distance, ...) when Charles started it."""
    swaps: tuple[SwapRow, ...] = ()
    rejections: tuple[RejectionRow, ...] = ()
    unstucks: int = 0
    command_gaps: CommandGaps | None = None
    """Gaps between successive commands from predictions; the median is over the gaps outside
    swaps."""
    recordings: tuple[RecordingReport, ...] = ()
    """Videos written."""
    backend: str = "tensorflow"
    """inference.backend the model ran on."""
    latency_p99_ms: float | None = None
    capture_p50_ms: float | None = None
    """One grab of the window (screen copy to array), median."""
    preprocess_p50_ms: float | None = None
    """Captured frame to model input (crop, resize, colours), median."""
    requested_frames: int = 0
    """Frames grabbed at once because the model was slower than the capture (follow_model)."""
    render_to_command_ms: ShownToCommand | None = None
    """Bundled game only; None for other games."""
    live: LiveRow | None = None
    """The live view (--live); None when it was not served."""
    stream: StreamReport | None = None
    """The stream to an ingest (--stream); None when there was none. Its URL hides the key."""
    game_restarts: int = 0
    """Times the bundled game this drive started died and was started again."""

    def to_json(self) -> dict[str, Any]:
        """The summary as `charles drive --json` prints it (the benchmarks read this)."""
        values = asdict(self)
        values["swaps"] = [
            {"from": row.from_name, "to": row.to_name, "version": row.version,
             "batches": row.batches, "load_s": row.load_s, "at_s": row.at_s}
            for row in self.swaps
        ]  # fmt: skip
        return values

    def lines(self) -> list[str]:
        """The summary as text for a person."""
        lines = [
            f"drove {self.window!r} with {self.model} via {self.controller} "
            f"for {self.seconds:.1f} s (stopped by {self.stopped_by})",
            f"  frames {self.frames}  predictions {self.predictions}  "
            f"FPS {self.fps:.1f}  PPS {self.pps:.1f}  ({self.backend})",
        ]
        if self.latency_p50_ms is not None and self.latency_p95_ms is not None:
            lines.append(
                f"  latency capture->command p50 {self.latency_p50_ms:.1f} ms  "
                f"p95 {self.latency_p95_ms:.1f} ms  (model {self.predict_p50_ms:.1f} ms, "
                f"grab {_ms(self.capture_p50_ms)}, preprocess {_ms(self.preprocess_p50_ms)})  "
                f"frames skipped while predicting {self.skipped_frames}"
            )
        shown = self.render_to_command_ms
        if shown is not None and shown.p50 is not None and shown.p95 is not None:
            lines.append(
                f"  latency game picture shown->command in its physics p50 {shown.p50:.1f} ms"
                f"  p95 {shown.p95:.1f} ms  ({shown.matched} commands matched)"
            )
        if self.nonfinite_predictions:
            lines.append(f"  non-finite predictions (sent neutral): {self.nonfinite_predictions}")
        if self.deadman_releases:
            lines.append(
                f"  controls went neutral by themselves {self.deadman_releases} time(s): no "
                "command came within controller.hold"
            )
        for swap in self.swaps:
            lines.append(
                f"  swap at {swap.at_s:.1f} s: {swap.from_name} -> {swap.to_name} "
                f"(loaded and checked in {swap.load_s:.2f} s beside driving)"
            )
        for rejection in self.rejections:
            lines.append(
                f"  rejected {rejection.version} at {rejection.at_s:.1f} s: {rejection.reason}"
            )
        gaps = self.command_gaps
        if gaps is not None and gaps.during_swaps:
            lines.append(
                f"  command gaps: median {gaps.median_ms:.1f} ms, largest "
                f"{gaps.largest_outside_ms:.1f} ms outside swaps, "
                f"{gaps.largest_during_ms:.1f} ms during swaps"
            )
        if self.unstucks:
            lines.append(f"  unstuck: {self.unstucks} recovery(ies) from a car standing still")
        if self.game_restarts:
            lines.append(
                f"  game restarted {self.game_restarts} time(s): it ended (a crash, a kill, "
                "closed) and was started again"
            )
        for video in self.recordings:
            lines.append(
                f"  recorded {video.path}: {video.seconds:.1f} s, {video.frames} frames "
                f"({video.repeated} repeated, {video.left_out} captured frames left out, "
                f"{video.dropped} dropped by a slow encoder; {video.encoder}; CPU "
                f"{video.drawing_cpu_s:.1f} s drawing, {video.encoding_cpu_s:.1f} s encoding)"
            )
            if len(video.files) > 1:
                lines.append(f"    in {len(video.files)} files, the last {video.files[-1]}")
            if video.error:
                lines.append(f"    recording failed: {video.error}")
        if self.live is not None:
            live = self.live
            lines.append(
                f"  live view: {live.viewers} viewer(s), {live.pictures_sent} pictures sent "
                f"({live.pictures_skipped} skipped by slow viewers), {live.refused} refused "
                f"over live.max_viewers, {live.unauthorized} without the token"
            )
        if self.stream is not None:
            stream = self.stream
            lines.append(
                f"  stream to {stream.url}: {stream.pictures_sent} pictures sent, "
                f"{stream.pictures_dropped} dropped, {stream.reconnects} reconnect(s), "
                f"connected {stream.seconds_connected:.1f} s"
            )
            if stream.last_error:
                lines.append(f"    last stream error: {stream.last_error}")
        if self.game is not None:
            game = self.game
            lines.append(
                f"  game: score {game.score:.1f}  distance {game.distance:.1f} m  "
                f"tiles {100 * game.tiles:.0f}%  episode {game.episode}"
            )
        return lines


def swap_rows(swaps: Sequence[Swap], started: float) -> tuple[SwapRow, ...]:
    """`swaps` timed from `started` (the clock time driving began)."""
    return tuple(
        SwapRow(s.from_name, s.to_name, s.version, s.batches, round(s.load_seconds, 3),
                round(s.at - started, 2))
        for s in swaps
    )  # fmt: skip


def rejection_rows(rejections: Sequence[Rejection], started: float) -> tuple[RejectionRow, ...]:
    return tuple(RejectionRow(r.version, r.reason, round(r.at - started, 2)) for r in rejections)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def median_ms(seconds: npt.ArrayLike) -> float | None:
    """Median of `seconds` in milliseconds, rounded to 0.01; None when empty."""
    return percentiles_ms(seconds, (50,))[0]


def percentiles_ms(seconds: npt.ArrayLike, points: Sequence[float]) -> list[float | None]:
    """`seconds` (a list, an array or a FloatRing) at each percentile, in milliseconds."""
    measured = np.asarray(seconds, dtype=np.float64)
    if not measured.size:
        return [None for _ in points]
    values = np.percentile(measured * 1000.0, points)
    return [round(float(v), 2) for v in values]


def command_gaps(sent_at: npt.ArrayLike, busy: Sequence[tuple[float, float]]) -> CommandGaps | None:
    """Gaps between successive commands, split by whether a swap was under way.

    A gap lies "during swaps" when it overlaps any `busy` interval (a background load, or the
    instant of a switch). A swap nobody can see leaves the largest gap during swaps no bigger
    than the gaps outside them. Times in seconds in, milliseconds out; None for < 2 commands.
    """
    times = np.asarray(sent_at, dtype=np.float64)
    if times.size < 2:
        return None
    starts, ends = times[:-1], times[1:]
    gaps = (ends - starts) * 1000.0
    during = np.zeros(len(gaps), dtype=bool)
    for begin, end in busy:
        during |= (starts <= end) & (ends >= begin)
    outside = gaps[~during]
    inside = gaps[during]
    return CommandGaps(
        count=len(gaps),
        median_ms=round(float(np.median(outside if len(outside) else gaps)), 2),
        largest_outside_ms=round(float(outside.max()), 2) if len(outside) else None,
        during_swaps=int(during.sum()),
        largest_during_ms=round(float(inside.max()), 2) if len(inside) else None,
        # Commands per second while loads ran and otherwise (1 / mean gap).
        pps_during=round(1000.0 * len(inside) / inside.sum(), 2) if len(inside) else None,
        pps_outside=round(1000.0 * len(outside) / outside.sum(), 2) if len(outside) else None,
    )
