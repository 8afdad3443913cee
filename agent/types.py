"""Values that cross threads. Frozen so no thread can change what another is reading."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    """A screen rectangle in physical pixels (left, top of the top-left pixel; width, height)."""

    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Frame:
    """One captured picture of the game window.

    `image` is what mss returns: uint8 BGRA, shape (height, width, 4). `captured_at` is
    `time.monotonic()` seconds at the grab, so capture-to-command latency is measured.
    """

    image: np.ndarray
    captured_at: float
    seq: int
    region: Region


@dataclass(frozen=True)
class ControllerState:
    """What a controller backend is asked to send.

    steering: stick X in [-1, 1] (negative = left); accelerate and brake: pedals in [0, 1].
    """

    steering: float = 0.0
    accelerate: float = 0.0
    brake: float = 0.0


NEUTRAL = ControllerState()


def clamp(value: float, low: float, high: float) -> float:
    """`value` limited to [low, high]; a non-finite value becomes 0.0, every axis' rest value.

    The one clamp of controller values: without the finite check, `max(-1.0, nan)` is -1.0,
    and a NaN would become full left lock.
    """
    return min(high, max(low, value)) if math.isfinite(value) else 0.0


def clamp_state(state: ControllerState) -> ControllerState:
    """`state` limited to its ranges; a non-finite value becomes that axis' rest value (0)."""
    return ControllerState(
        steering=clamp(state.steering, -1.0, 1.0),
        accelerate=clamp(state.accelerate, 0.0, 1.0),
        brake=clamp(state.brake, 0.0, 1.0),
    )


@dataclass(frozen=True)
class Prediction:
    """One inference result, as the network gave it.

    `throttle` and `steering` are in [-1, 1], or NaN/infinity from a broken network: then
    `finite` is False, and the control mapping (`agent.drive.control.ControlMapper`) sends neutral.
    """

    throttle: float
    steering: float
    seconds: float
    """Wall time of the inference call (perf_counter)."""
    convcam: np.ndarray | None = None
    """Last conv feature map (rows, cols, kernels), float32, when the predictor was asked for it."""

    @property
    def finite(self) -> bool:
        return math.isfinite(self.throttle) and math.isfinite(self.steering)


@dataclass(frozen=True)
class Tick:
    """One pass of the drive loop, offered to the console (and later the recorder).

    Times are `time.monotonic()` seconds; `latency` is capture -> command sent.
    """

    state: str
    """"driving", "paused", "waiting for window" or "unstuck" (a recovery script drives)."""
    frame: Frame | None
    prediction: Prediction | None
    command: ControllerState
    commanded_at: float
    model_input: np.ndarray | None = None
    """The frame as the model saw it (RGB uint8, the line's input shape), for the recorder."""

    @property
    def latency(self) -> float | None:
        if self.frame is None or self.prediction is None:
            return None
        return self.commanded_at - self.frame.captured_at
