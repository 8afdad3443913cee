"""The live player console: what the agent sees, predicts and sends, as the seed's player shows.

It runs on the main thread and only reads two slots: the newest tick and the newest status
snapshot (agent/drive/status.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.drive.status import DriveStatus
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.types import Tick


@dataclass(frozen=True)
class Rates:
    """Per-second rates measured between two console refreshes."""

    fps: float
    """Frames captured per second."""
    pps: float
    """Predictions per second."""


class RateMeter:
    """Per-second rates of frames and predictions between two looks at the drive status.

    Measured on the reader's clock, not the snapshot's: a loop that stopped publishing shows
    its rates falling to zero, not frozen at their last value.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK, every: float = 0.5) -> None:
        self._clock = clock
        self._every = every
        self._last: tuple[float, int, int] | None = None
        self.rates = Rates(0.0, 0.0)

    def update(self, status: DriveStatus | None) -> Rates:
        now = self._clock.now()
        frames, predictions = (status.frames, status.predictions) if status else (0, 0)
        if self._last is None:
            self._last = (now, frames, predictions)
            return self.rates
        then, old_frames, old_predictions = self._last
        if now - then >= self._every:
            span = now - then
            self.rates = Rates((frames - old_frames) / span, (predictions - old_predictions) / span)
            self._last = (now, frames, predictions)
        return self.rates


def render(
    status: DriveStatus,
    tick: Tick | None,
    rates: Rates,
    controller: str,
    window: str,
    follows_store: bool = False,
) -> Group:
    """The console picture: state line, then raw predictions beside controller values, then
    rates, and the last swap and rejection when the store is followed."""
    state = status.state
    colour = {"driving": "green", "paused": "yellow", "unstuck": "magenta"}.get(state, "red")
    header = Text.assemble(
        ("Charles ", "bold"), (f"[{state}]", f"bold {colour}"),
        f"  model {status.model}  window '{window}'  controller {controller}",
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
    if status.unstucks:
        footer.append(f"   unstucks {status.unstucks}")
    if follows_store:
        lines.append(_swap_line(status))
    return Group(*lines)


def _swap_line(status: DriveStatus) -> Text:
    """The last swap and the number of rejections, for a person watching the store."""
    if status.swaps:
        last = status.swaps[-1]
        ago = status.at - last.at
        text = (
            f"swaps {len(status.swaps)}, last {ago:.0f} s ago: {last.from_name} -> "
            f"{last.to_name} (loaded in {last.load_seconds:.2f} s)"
        )
    else:
        text = "swaps 0: following the store for newer checkpoints"
    if status.rejections:
        newest = status.rejections[-1]
        text += f"   rejected {len(status.rejections)} (last {newest.version})"
    return Text(text)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"
