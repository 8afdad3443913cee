"""The pictures a recording is made of: the game with the HUD, or the stream layout.

The stream layout is the seed's stream in one 1280x720 picture:

    +---------------------------------+--------------------+
    |                                 | model input        |
    |   the game (880x495)            | (as the model sees)|
    |                                 +--------------------+
    |                                 | Convcam            |
    +---------------------------------+                    |
    |   console: state, model, rates, +--------------------+
    |   raw outputs, controller bars  | trainer loss curve |
    +---------------------------------+--------------------+

Everything comes from what the drive loop already computed: the captured frame, and the newest
tick with its model input, prediction and Convcam (the driving prediction's own feature map, so
recording never runs the model a second time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from agent.inference.convcam import tile
from agent.record import draw
from agent.record.hud import PanelGeometry, Status, draw_hud, draw_panel, draw_swap_marker
from agent.record.writer import even_size
from agent.types import Frame, Tick

LAYOUT_SIZE = (1280, 720)
GAME_BOX = (0, 0, 880, 495)
"""(left, top, width, height) of the game picture in the layout."""
CONSOLE_BOX = (0, 495, 880, 225)
INPUT_BOX = (880, 26, 400, 225)
CONVCAM_BOX = (880, 282, 400, 250)
LOSS_BOX = (890, 566, 380, 144)


@dataclass(frozen=True)
class Panels:
    """What the layout shows besides the frame and tick."""

    convcam_layer: str = ""
    losses: tuple[tuple[int, float], ...] = ()
    """(batches, total loss) of the trainer's published checkpoints."""


class Composer:
    """Turns (captured frame, newest tick, status) into one BGR video picture.

    `mode` "hud" keeps the game picture at `size` (the capture size) with the HUD drawn on it;
    "layout" makes the stream layout. The Convcam picture is tiled once per prediction, not once
    per video frame.
    """

    def __init__(self, mode: str, size: tuple[int, int], hud: bool, convcam: bool) -> None:
        self.mode = mode
        self.size = even_size(*(LAYOUT_SIZE if mode == "layout" else size))
        self._hud = hud
        self._convcam = convcam
        self._made: dict[str, tuple[object, np.ndarray]] = {}

    def compose(
        self, frame: Frame | None, tick: Tick | None, status: Status, panels: Panels
    ) -> np.ndarray:
        if self.mode == "layout":
            return self._layout(frame, tick, status, panels)
        width, height = self.size
        picture = _game_picture(frame, width, height)
        if self._hud:
            draw_hud(picture, tick, status)
        if self._convcam:
            tiles = self._tiles(tick)
            if tiles is not None:
                # A small inset at the bottom right: the HUD mode's place for the Convcam.
                box = (width - width // 4 - 8, height - height // 4 - 8, width // 4, height // 4)
                inset = self._once("inset", tiles, lambda: draw.fit(tiles, *box[2:]))
                draw.place(picture, inset, *box)
        return picture

    def _layout(
        self, frame: Frame | None, tick: Tick | None, status: Status, panels: Panels
    ) -> np.ndarray:
        width, height = self.size
        picture = np.zeros((height, width, 3), np.uint8)
        left, top, box_w, box_h = GAME_BOX
        picture[top : top + box_h, left : left + box_w] = _game_picture(frame, box_w, box_h)
        scale = 0.9
        if self._hud:
            draw_panel(
                picture, PanelGeometry(CONSOLE_BOX[0] + 4, CONSOLE_BOX[1] + 6, scale), tick, status
            )
            draw_swap_marker(picture, status, GAME_BOX[2] - 12, PanelGeometry(0, 12, scale))
            _store_lines(picture, status)
        self._input_panel(picture, tick)
        if self._convcam:
            self._convcam_panel(picture, tick, panels)
        _loss_panel(picture, panels.losses)
        return picture

    def _input_panel(self, picture: np.ndarray, tick: Tick | None) -> None:
        left, top, width, height = INPUT_BOX
        draw.text(picture, "model input", left + 10, top - 8, 0.5, draw.GREY)
        model_input = tick.model_input if tick is not None else None
        if model_input is not None:
            fitted = self._once(
                "input", model_input,
                lambda: draw.fit(cv2.cvtColor(model_input, cv2.COLOR_RGB2BGR), width, height),
            )  # fmt: skip
            draw.place(picture, fitted, *INPUT_BOX)

    def _convcam_panel(self, picture: np.ndarray, tick: Tick | None, panels: Panels) -> None:
        left, top, width, height = CONVCAM_BOX
        tiles = self._tiles(tick)
        title = f"Convcam {panels.convcam_layer}"
        if tiles is not None:
            feature_map = self._made["tiles"][0]
            title += f" ({feature_map.shape[-1]} kernels)"  # type: ignore[attr-defined]
            fitted = self._once("panel", tiles, lambda: draw.fit(tiles, width, height))
            draw.place(picture, fitted, *CONVCAM_BOX)
        draw.text(picture, title, left + 10, top - 8, 0.5, draw.GREY)

    def _tiles(self, tick: Tick | None) -> np.ndarray | None:
        """The Convcam picture of the newest prediction that had one (the last one while the
        agent pauses or a recovery drives)."""
        prediction = tick.prediction if tick is not None else None
        feature_map = prediction.convcam if prediction is not None else None
        if feature_map is None:
            made = self._made.get("tiles")
            return made[1] if made is not None else None
        return self._once("tiles", feature_map, lambda: tile(feature_map))

    def _once(self, what: str, source: object, make: Callable[[], np.ndarray]) -> np.ndarray:
        """`make()` for a new `source`, the picture made last time for the same one: the model
        input and the Convcam change once per prediction, not once per video frame."""
        made = self._made.get(what)
        if made is None or made[0] is not source:
            made = (source, make())  # holding `source` keeps its identity from being reused
            self._made[what] = made
        return made[1]


def _game_picture(frame: Frame | None, width: int, height: int) -> np.ndarray:
    """The captured frame as a BGR picture of exactly width x height (black before the first)."""
    if frame is None:
        return np.zeros((height, width, 3), np.uint8)
    image = frame.image
    if image.shape[1] != width or image.shape[0] != height:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def _store_lines(picture: np.ndarray, status: Status) -> None:
    """The console's second column: what the hot swap and unstuck did so far."""
    left, top = CONSOLE_BOX[0] + 480, CONSOLE_BOX[1] + 30
    last = f" (last {status.last_swap_to})" if status.last_swap_to else ""
    lines = (
        f"checkpoints swapped in: {status.swaps}{last}",
        f"checkpoints rejected: {status.rejections}",
        f"unstuck recoveries: {status.unstucks}",
    )
    for row, words in enumerate(lines):
        draw.text(picture, words, left, top + 26 * row, 0.5, draw.GREY)


def _loss_panel(picture: np.ndarray, losses: tuple[tuple[int, float], ...]) -> None:
    left, top, width, height = LOSS_BOX
    if len(losses) < 1:
        draw.text(
            picture, "trainer loss: no checkpoints with a loss", left, top - 8, 0.5, draw.GREY
        )
        return
    batches, last = losses[-1]
    draw.text(
        picture, f"trainer loss {last:.4f} at {batches} batches", left, top - 8, 0.5, draw.GREY
    )
    cv2.rectangle(picture, (left, top), (left + width - 1, top + height - 1), draw.TRACK, 1)
    if len(losses) < 2:
        return
    xs = np.array([point[0] for point in losses], np.float64)
    # Log scale: a loss falls by orders of magnitude early and by little later.
    ys = np.log10(np.maximum(np.array([point[1] for point in losses], np.float64), 1e-12))
    x_span = max(xs.max() - xs.min(), 1.0)
    y_span = max(ys.max() - ys.min(), 1e-9)
    px = left + 4 + (xs - xs.min()) / x_span * (width - 8)
    py = top + 4 + (ys.max() - ys) / y_span * (height - 8)
    points = np.stack([px, py], axis=1).round().astype(np.int32)
    cv2.polylines(picture, [points], False, draw.ORANGE, 2, cv2.LINE_AA)
