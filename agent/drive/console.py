"""The live player console: what the agent sees, predicts and sends, as the seed's player shows.

It runs on the main thread and only reads: the newest tick from a slot and a few counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.types import Tick

if TYPE_CHECKING:
    from agent.drive.hotswap import HotSwapRecord


@dataclass(frozen=True)
class Rates:
    """Per-second rates measured between two console refreshes."""

    fps: float
    """Frames captured per second."""
    pps: float
    """Predictions per second."""


class RateMeter:
    """Turns two ever-growing counters into per-second rates between calls."""

    def __init__(self, frames: Callable[[], int], predictions: Callable[[], int]) -> None:
        self._frames = frames
        self._predictions = predictions
        self._last = (time.monotonic(), frames(), predictions())
        self.rates = Rates(0.0, 0.0)

    def update(self) -> Rates:
        now, frames, predictions = time.monotonic(), self._frames(), self._predictions()
        then, old_frames, old_predictions = self._last
        if now - then >= 0.5:
            span = now - then
            self.rates = Rates((frames - old_frames) / span, (predictions - old_predictions) / span)
            self._last = (now, frames, predictions)
        return self.rates


def render(
    tick: Tick | None,
    rates: Rates,
    model_name: str,
    backend: str,
    window: str,
    swaps: HotSwapRecord | None = None,
    unstucks: int = 0,
) -> Group:
    """The console picture: state line, then raw predictions beside controller values, then
    rates, and the last swap and rejection when the store is followed."""
    state = tick.state if tick else "starting"
    colour = {"driving": "green", "paused": "yellow", "unstuck": "magenta"}.get(state, "red")
    header = Text.assemble(
        ("Charles ", "bold"), (f"[{state}]", f"bold {colour}"),
        f"  model {model_name}  window '{window}'  controller {backend}",
    )  # fmt: skip
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("", "raw prediction", "controller value"):
        table.add_column(column, justify="right")
    prediction = tick.prediction if tick else None
    command = tick.command if tick else None
    table.add_row(
        "throttle",
        _number(prediction.throttle if prediction else None),
        f"accel {_number(command.accelerate if command else None)} "
        f"brake {_number(command.brake if command else None)}",
    )
    table.add_row(
        "steering",
        _number(prediction.steering if prediction else None),
        f"stick X {_number(command.steering if command else None)}",
    )
    latency = tick.latency if tick else None
    footer = Text(
        f"FPS {rates.fps:5.1f}   PPS {rates.pps:5.1f}   "
        f"latency {latency * 1000:6.1f} ms" if latency is not None else
        f"FPS {rates.fps:5.1f}   PPS {rates.pps:5.1f}   latency   -"
    )  # fmt: skip
    lines: list[Text] = [header, table, footer]  # type: ignore[list-item]
    if unstucks:
        footer.append(f"   unstucks {unstucks}")
    if swaps is not None:
        lines.append(_swap_line(swaps))
    return Group(*lines)


def _swap_line(record: HotSwapRecord) -> Text:
    """The last swap and the number of rejections, for a person watching the store."""
    if record.swaps:
        last = record.swaps[-1]
        ago = time.monotonic() - last.at
        text = (
            f"swaps {len(record.swaps)}, last {ago:.0f} s ago: {last.from_name} -> "
            f"{last.to_name} (loaded in {last.load_seconds:.2f} s)"
        )
    else:
        text = "swaps 0: following the store for newer checkpoints"
    if record.rejections:
        newest = record.rejections[-1]
        text += f"   rejected {len(record.rejections)} (last {newest.version})"
    return Text(text)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"
