"""The end-of-run report of `charles drive`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DriveSummary:
    """The end-of-run report (times in seconds, rates per second, latencies in ms)."""

    model: str
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
    lagged_ticks: int
    nonfinite_predictions: int
    deadman_releases: int
    """Times the controller went neutral by itself because no command came for controller.hold."""
    game: dict[str, Any] | None
    """The bundled game's last telemetry sample (score, distance, ...) when Charles started it."""

    def lines(self) -> list[str]:
        """The summary as text for a person."""
        lines = [
            f"drove {self.window!r} with {self.model} via {self.controller} "
            f"for {self.seconds:.1f} s (stopped by {self.stopped_by})",
            f"  frames {self.frames}  predictions {self.predictions}  "
            f"FPS {self.fps:.1f}  PPS {self.pps:.1f}",
        ]
        if self.latency_p50_ms is not None and self.latency_p95_ms is not None:
            lines.append(
                f"  latency capture->command p50 {self.latency_p50_ms:.1f} ms  "
                f"p95 {self.latency_p95_ms:.1f} ms  (model {self.predict_p50_ms:.1f} ms)  "
                f"late ticks {self.lagged_ticks}"
            )
        if self.nonfinite_predictions:
            lines.append(f"  non-finite predictions (sent neutral): {self.nonfinite_predictions}")
        if self.deadman_releases:
            lines.append(
                f"  controls went neutral by themselves {self.deadman_releases} time(s): no "
                "command came within controller.hold"
            )
        if self.game:
            game = self.game
            lines.append(
                f"  game: score {game.get('score', 0):.1f}  "
                f"distance {game.get('distance', 0):.1f} m  "
                f"tiles {100 * game.get('tiles', 0):.0f}%  episode {game.get('episode')}"
            )
        return lines


def median_ms(seconds: Sequence[float]) -> float | None:
    """Median of `seconds` in milliseconds, rounded to 0.01; None when empty."""
    return percentiles_ms(seconds, (50,))[0]


def percentiles_ms(seconds: Sequence[float], points: Sequence[float]) -> list[float | None]:
    if not len(seconds):
        return [None for _ in points]
    values = np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, points)
    return [round(float(v), 2) for v in values]
