"""What the live view says about the drive, as JSON: `/status.json` and each overlay event.

Both are built from the same read-only inputs: one `DriveStatus` snapshot, the newest `Tick`
(raw prediction and controller values, for the player console), the rates measured on the
server's clock and the trainer's loss curve. Browsers' JSON.parse refuses NaN and Infinity, and
a broken network predicts exactly those, so every non-finite number is written as null.

The overlay event (one per `data:` line of `GET /events`) is flat and small, four times a
second for as long as a viewer watches, so it carries counts and the newest swap and
rejection, never the whole history; `/status.json` carries the whole snapshot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from agent.drive.console import Rates
from agent.drive.status import DriveStatus
from agent.types import Tick

Json = dict[str, Any]


def status_document(status: DriveStatus | None, seq: int, rates: Rates) -> Json:
    """`GET /status.json`: {"seq", "status" (every DriveStatus field, or null before the first
    snapshot), "rates": {"fps", "pps"}}."""
    return {
        "seq": seq,
        "status": None if status is None else asdict(status),
        "rates": {"fps": rates.fps, "pps": rates.pps},
    }


def overlay_event(
    status: DriveStatus | None,
    seq: int,
    tick: Tick | None,
    rates: Rates,
    losses: Sequence[tuple[int, float]],
) -> Json:
    """One overlay event: everything the page shows (field list in agent/live/server.py)."""
    event: Json = {"seq": seq, "fps": rates.fps, "pps": rates.pps}
    if status is None:
        event.update(state="starting", model=None, version=None, batches=None, frames=0,
                     predictions=0, unstucks=0, swaps=0, last_swap=None, rejections=0,
                     last_rejection=None)  # fmt: skip
    else:
        event.update(
            state=status.state, model=status.model, version=status.version,
            batches=status.batches, frames=status.frames, predictions=status.predictions,
            unstucks=status.unstucks, swaps=len(status.swaps),
            last_swap=_last_swap(status), rejections=len(status.rejections),
            last_rejection=_last_rejection(status),
        )  # fmt: skip
    event["console"] = _console(tick)
    event["losses"] = [[batches, loss] for batches, loss in losses]
    return event


def to_json(document: Json) -> str:
    """`document` as compact JSON that any browser parses: non-finite numbers become null."""
    return json.dumps(_finite(document), separators=(",", ":"), allow_nan=False)


def _last_swap(status: DriveStatus) -> Json | None:
    if not status.swaps:
        return None
    swap = status.swaps[-1]
    return {
        "from": swap.from_name, "to": swap.to_name, "version": swap.version,
        "batches": swap.batches, "load_seconds": swap.load_seconds,
        "seconds_ago": status.at - swap.at,
    }  # fmt: skip


def _last_rejection(status: DriveStatus) -> Json | None:
    if not status.rejections:
        return None
    rejection = status.rejections[-1]
    return {
        "version": rejection.version,
        "reason": rejection.reason,
        "seconds_ago": status.at - rejection.at,
    }


def _console(tick: Tick | None) -> Json | None:
    """The player console's numbers: raw prediction in [-1, 1] beside what the controller
    was sent (stick X in [-1, 1], pedals in [0, 1]); null before the loop's first tick."""
    if tick is None:
        return None
    prediction, command, latency = tick.prediction, tick.command, tick.latency
    return {
        "throttle": None if prediction is None else prediction.throttle,
        "steering": None if prediction is None else prediction.steering,
        "stick_x": command.steering,
        "accelerate": command.accelerate,
        "brake": command.brake,
        "latency_ms": None if latency is None else latency * 1000.0,
    }


def _finite(value: Any) -> Any:
    if isinstance(value, np.generic):  # a numpy number json cannot write
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
