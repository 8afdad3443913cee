"""The HUD: what the agent predicted and sent, drawn on the picture it captured.

One panel (`draw_panel`) holds the state, model line, version and batches, FPS, PPS and
latency, the raw outputs, and the controller values as bars (accelerate, brake, steering). The
HUD mode draws it over the game picture on a darkened box; the stream layout draws it in its
console area. A checkpoint swapped in (step 5) shows as a yellow marker for a few seconds.

Geometry is designed for 1280x720 and scaled with the picture, so a 640x360 capture gets the
same HUD at half size. `PanelGeometry` is public so tests can look where the bars are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agent.record import draw
from agent.types import Tick

SWAP_MARKER_SECONDS = 4.0
"""How long the "new checkpoint" marker stays after a swap."""
STATE_COLOURS = {
    "driving": draw.GREEN,
    "paused": draw.YELLOW,
    "unstuck": (200, 80, 200),
}
"""Other states (waiting for the window, starting) are red."""


@dataclass(frozen=True)
class Status:
    """What the picture shows besides the frame and the newest tick (from the drive session)."""

    model_name: str
    fps: float = 0.0
    pps: float = 0.0
    swaps: int = 0
    last_swap_to: str | None = None
    """The version that took over last, e.g. "v0003"."""
    last_swap_at: float | None = None
    """time.monotonic() of the last swap."""
    rejections: int = 0
    unstucks: int = 0


@dataclass(frozen=True)
class PanelGeometry:
    """Where the panel and its bars are, for a panel of `scale` (1.0 = 1280x720 design)."""

    left: int
    top: int
    scale: float

    def _at(self, x: float, y: float) -> tuple[int, int]:
        return self.left + round(x * self.scale), self.top + round(y * self.scale)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole panel."""
        return round(470 * self.scale), round(205 * self.scale)

    def bar(self, row: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of bar `row`: 0 accelerate, 1 brake, 2 steering."""
        left, top = self._at(90, 124 + 26 * row)
        return left, top, round(360 * self.scale), round(18 * self.scale)

    def line(self, row: int) -> tuple[int, int]:
        """(left, baseline) of text line `row`."""
        return self._at(12, 30 + 26 * row)


def hud_geometry(width: int, height: int) -> PanelGeometry:
    """The HUD panel on a `width` x `height` game picture: top left, scaled with the picture."""
    scale = min(width / 1280, height / 720)
    return PanelGeometry(round(10 * scale), round(10 * scale), scale)


def draw_hud(picture: np.ndarray, tick: Tick | None, status: Status) -> None:
    """The HUD over the game picture (in place)."""
    height, width = picture.shape[:2]
    geometry = hud_geometry(width, height)
    panel_w, panel_h = geometry.size
    draw.shade(picture, geometry.left, geometry.top, panel_w, panel_h, alpha=0.35)
    draw_panel(picture, geometry, tick, status)
    draw_swap_marker(picture, status, width - round(20 * geometry.scale), geometry)


def draw_panel(
    picture: np.ndarray, geometry: PanelGeometry, tick: Tick | None, status: Status
) -> None:
    """State, model, rates, raw outputs and controller bars at `geometry` (in place)."""
    size = 0.55 * geometry.scale
    state = tick.state if tick is not None else "starting"
    left, baseline = geometry.line(0)
    draw.text(picture, "CHARLES", left, baseline, 0.8 * geometry.scale)
    draw.text(
        picture, state.upper(), left + round(140 * geometry.scale), baseline,
        0.8 * geometry.scale, STATE_COLOURS.get(state, draw.RED),
    )  # fmt: skip
    draw.text(picture, status.model_name, *geometry.line(1), size)
    latency = tick.latency if tick is not None else None
    shown_latency = f"{latency * 1000:.1f} ms" if latency is not None else "-"
    extra = f"  swaps {status.swaps}" if status.swaps else ""
    extra += f"  unstuck {status.unstucks}" if status.unstucks else ""
    draw.text(
        picture, f"FPS {status.fps:.1f}  PPS {status.pps:.1f}  latency {shown_latency}{extra}",
        *geometry.line(2), size,
    )  # fmt: skip
    prediction = tick.prediction if tick is not None else None
    raw = (
        f"raw  throttle {prediction.throttle:+.3f}  steering {prediction.steering:+.3f}"
        if prediction is not None
        else "raw  -"
    )
    draw.text(picture, raw, *geometry.line(3), size)
    command = tick.command if tick is not None else None
    values = (command.accelerate, command.brake, command.steering) if command else (0.0, 0.0, 0.0)
    for row, (label, value) in enumerate(zip(("accel", "brake", "steer"), values, strict=True)):
        left, top, width, height = geometry.bar(row)
        draw.text(picture, f"{label}", geometry.line(0)[0], top + height - 2, size, draw.GREY)
        if row == 2:
            draw.centred_bar(picture, value, left, top, width, height, draw.BLUE)
        else:
            colour = draw.GREEN if row == 0 else draw.RED
            draw.bar(picture, value, left, top, width, height, colour)


def draw_swap_marker(
    picture: np.ndarray, status: Status, right: int, geometry: PanelGeometry
) -> None:
    """A yellow "new checkpoint" box ending at x = `right`, for a few seconds after a swap."""
    if status.last_swap_at is None or time.monotonic() - status.last_swap_at > SWAP_MARKER_SECONDS:
        return
    scale = geometry.scale
    width, height = round(360 * scale), round(40 * scale)
    left, top = right - width, geometry.top
    picture[top : top + height, left : left + width] = draw.YELLOW
    draw.text(
        picture, f"NEW CHECKPOINT {status.last_swap_to}", left + round(12 * scale),
        top + round(28 * scale), 0.7 * scale, (0, 0, 0),
    )  # fmt: skip
