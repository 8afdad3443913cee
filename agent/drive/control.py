"""Prediction -> controller values: dead-zone compensation, clamping and smoothing.

The model says what it wants in [-1, 1]; the game only reacts to input past its dead zone, so a
small output (steer a little) would be swallowed and the car would drive straight. Each non-zero
output is therefore lifted into the part of the range the game does react to:

    v -> sign(v) * (dz + (1 - dz) * |v|)        (0 stays 0)

The order is: reject non-finite values, clamp to [-1, 1], smooth, lift, split throttle into
accelerate/brake. Smoothing works on the model's own values (before the lift), so it smooths what
the model means rather than the game-specific rescaling.

`ControlMapper.map` is the one place that decides what a broken (NaN or infinite) prediction
means: neutral, and no smoothing history carried past it. Clamping is `agent.types.clamp`.
"""

from __future__ import annotations

import math

from agent.config import ControllerConfig
from agent.types import NEUTRAL, ControllerState, clamp


def lift_past_deadzone(value: float, deadzone: float) -> float:
    """Rescale `value` in [-1, 1] so that any non-zero value lands outside `deadzone` (0..<1).

    0 stays 0, ±1 stays ±1, and a tiny value becomes ±deadzone: the edge the game starts to react
    at.
    """
    if value == 0.0:
        return 0.0
    return math.copysign(deadzone + (1.0 - deadzone) * abs(value), value)


def to_controller_state(
    throttle: float, steering: float, deadzone_throttle: float = 0.0, deadzone_steering: float = 0.0
) -> ControllerState:
    """One finite prediction (throttle, steering in [-1, 1]) as controller values, unsmoothed.

    throttle > 0 accelerates, < 0 brakes (reverses in most games). Out-of-range values are
    clamped. Non-finite input is the mapper's to refuse; the clamp still turns it into rest (0),
    never into full lock.
    """
    # The lift keeps [-1, 1] in [-1, 1], so only the inputs need clamping.
    pedal = lift_past_deadzone(clamp(throttle, -1.0, 1.0), deadzone_throttle)
    stick = lift_past_deadzone(clamp(steering, -1.0, 1.0), deadzone_steering)
    return ControllerState(steering=stick, accelerate=max(0.0, pedal), brake=max(0.0, -pedal))


class ControlMapper:
    """Stateful prediction -> ControllerState mapping with optional exponential smoothing.

    `smoothing` is alpha in [0, 1): each output is alpha * previous + (1 - alpha) * new, so
    0 sends each prediction as it is and 0.9 follows the model slowly. The first prediction after
    construction or `reset()` is taken as it is (no ramp up from neutral). Not thread-safe: it
    belongs to the drive loop.
    """

    def __init__(
        self,
        deadzone_throttle: float = 0.0,
        deadzone_steering: float = 0.0,
        smoothing: float = 0.0,
    ) -> None:
        for name, value, high in (
            ("deadzone_throttle", deadzone_throttle, 0.95),
            ("deadzone_steering", deadzone_steering, 0.95),
            ("smoothing", smoothing, 0.99),
        ):
            if not 0.0 <= value <= high:
                raise ValueError(f"{name} must be between 0 and {high} (got {value!r})")
        self.deadzone_throttle = deadzone_throttle
        self.deadzone_steering = deadzone_steering
        self.smoothing = smoothing
        self._previous: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, config: ControllerConfig) -> ControlMapper:
        return cls(
            deadzone_throttle=config.deadzone_throttle,
            deadzone_steering=config.deadzone_steering,
            smoothing=config.smoothing,
        )

    def map(self, throttle: float, steering: float) -> ControllerState:
        """Controller values for one prediction (throttle, steering in [-1, 1])."""
        if not (math.isfinite(throttle) and math.isfinite(steering)):
            self.reset()
            return NEUTRAL
        throttle = clamp(throttle, -1.0, 1.0)
        steering = clamp(steering, -1.0, 1.0)
        if self._previous is not None and self.smoothing > 0.0:
            alpha = self.smoothing
            throttle = alpha * self._previous[0] + (1.0 - alpha) * throttle
            steering = alpha * self._previous[1] + (1.0 - alpha) * steering
        self._previous = (throttle, steering)
        return to_controller_state(
            throttle, steering, self.deadzone_throttle, self.deadzone_steering
        )

    def reset(self) -> None:
        """Forget the smoothing history (after a pause, an unstuck or a broken prediction)."""
        self._previous = None
