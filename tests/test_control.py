"""Prediction -> controller values: dead zones, clamping, smoothing, broken predictions."""

from __future__ import annotations

import math

import pytest

from agent.config import ControllerConfig
from agent.drive.control import ControlMapper, lift_past_deadzone, to_controller_state
from agent.types import NEUTRAL, ControllerState, clamp


def test_positive_throttle_accelerates_negative_brakes() -> None:
    assert to_controller_state(0.6, 0.0) == ControllerState(0.0, 0.6, 0.0)
    assert to_controller_state(-0.4, 0.0) == ControllerState(0.0, 0.0, 0.4)
    assert to_controller_state(0.0, -0.25) == ControllerState(-0.25, 0.0, 0.0)
    assert to_controller_state(0.0, 0.0) == NEUTRAL


@pytest.mark.parametrize("deadzone", [0.0, 0.24, 0.5, 0.95])
def test_small_values_are_lifted_past_the_deadzone(deadzone: float) -> None:
    assert lift_past_deadzone(0.0, deadzone) == 0.0
    assert lift_past_deadzone(1.0, deadzone) == 1.0
    assert lift_past_deadzone(-1.0, deadzone) == -1.0
    for small in (1e-6, 0.01, 0.1):
        lifted = lift_past_deadzone(small, deadzone)
        if deadzone > 0.0:
            assert lifted >= deadzone
            assert lifted > small
        else:
            assert lifted == small
        assert lift_past_deadzone(-small, deadzone) == -lifted
    assert lift_past_deadzone(0.5, deadzone) == pytest.approx(deadzone + (1 - deadzone) * 0.5)


def test_deadzones_apply_per_axis() -> None:
    state = to_controller_state(0.1, -0.1, deadzone_throttle=0.2, deadzone_steering=0.24)
    assert state.accelerate == pytest.approx(0.2 + 0.8 * 0.1)
    assert state.steering == pytest.approx(-(0.24 + 0.76 * 0.1))
    assert state.brake == 0.0
    braking = to_controller_state(-0.1, 0.0, deadzone_throttle=0.2, deadzone_steering=0.24)
    assert braking == ControllerState(0.0, 0.0, pytest.approx(0.28))
    # Zero stays zero: the dead zone must not turn "straight ahead" into a steer.
    assert to_controller_state(0.0, 0.0, 0.5, 0.5) == NEUTRAL


def test_out_of_range_predictions_are_clamped() -> None:
    assert to_controller_state(3.0, -7.5, 0.3, 0.3) == ControllerState(-1.0, 1.0, 0.0)
    assert to_controller_state(-2.0, 1.5) == ControllerState(1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("throttle", "steering"),
    [(math.nan, 0.5), (0.5, math.nan), (math.inf, 0.0), (0.0, -math.inf)],
)
def test_non_finite_prediction_is_neutral(throttle: float, steering: float) -> None:
    mapper = ControlMapper(0.2, 0.2, smoothing=0.5)
    assert mapper.map(throttle, steering) == NEUTRAL
    # Even unfiltered, the clamp turns a non-finite value into rest, never into full lock.
    state = to_controller_state(throttle, steering, 0.2, 0.2)
    assert all(math.isfinite(v) for v in (state.steering, state.accelerate, state.brake))
    assert abs(state.steering) < 1.0, "a NaN became full lock"
    assert clamp(math.nan, -1.0, 1.0) == 0.0 and clamp(-math.inf, -1.0, 1.0) == 0.0


def test_mapper_from_config_uses_its_deadzones_and_smoothing() -> None:
    config = ControllerConfig(deadzone_throttle=0.1, deadzone_steering=0.3, smoothing=0.5)
    mapper = ControlMapper.from_config(config)
    assert mapper.map(0.5, 0.5) == to_controller_state(0.5, 0.5, 0.1, 0.3)
    assert mapper.smoothing == 0.5
    assert ControlMapper().smoothing == 0.0  # by default each prediction is sent as it is


def test_smoothing_zero_passes_each_prediction() -> None:
    mapper = ControlMapper(smoothing=0.0)
    assert mapper.map(1.0, 1.0) == ControllerState(1.0, 1.0, 0.0)
    assert mapper.map(-1.0, -1.0) == ControllerState(-1.0, 0.0, 1.0)


def test_smoothing_lags_then_converges() -> None:
    mapper = ControlMapper(smoothing=0.8)
    assert mapper.map(0.0, 0.0) == NEUTRAL  # the first prediction is taken as it is
    first = mapper.map(1.0, -1.0)
    assert first.accelerate == pytest.approx(0.2)
    assert first.steering == pytest.approx(-0.2)
    for _ in range(100):
        state = mapper.map(1.0, -1.0)
    assert state.accelerate == pytest.approx(1.0, abs=1e-6)
    assert state.steering == pytest.approx(-1.0, abs=1e-6)


def test_smoothing_works_before_the_deadzone_lift() -> None:
    mapper = ControlMapper(deadzone_steering=0.5, smoothing=0.5)
    mapper.map(0.0, 0.0)
    # smoothed 0.2 -> lifted 0.5 + 0.5 * 0.2
    assert mapper.map(0.0, 0.4).steering == pytest.approx(0.6)


def test_non_finite_resets_smoothing_and_reset_forgets_history() -> None:
    mapper = ControlMapper(smoothing=0.9)
    mapper.map(1.0, 1.0)
    assert mapper.map(math.nan, 0.0) == NEUTRAL
    # After the reset the next prediction is not pulled towards the old 1.0.
    assert mapper.map(-0.5, -0.5) == ControllerState(-0.5, 0.0, 0.5)
    mapper.reset()
    assert mapper.map(0.3, 0.3) == ControllerState(0.3, 0.3, 0.0)


@pytest.mark.parametrize("extreme", [100.0, -100.0])
def test_out_of_range_input_does_not_stick_in_the_filter(extreme: float) -> None:
    mapper = ControlMapper(smoothing=0.5)
    mapper.map(extreme, extreme)  # clamped to ±1 before it is remembered
    state = mapper.map(0.0, 0.0)
    half = math.copysign(0.5, extreme)
    assert state.steering == pytest.approx(half)
    assert (state.accelerate, state.brake) == pytest.approx((max(half, 0.0), max(-half, 0.0)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deadzone_throttle": -0.1},
        {"deadzone_throttle": 0.96},
        {"deadzone_steering": 1.0},
        {"smoothing": 1.0},
    ],
)
def test_mapper_rejects_invalid_parameters(kwargs: dict[str, float]) -> None:
    [name] = kwargs
    with pytest.raises(ValueError, match=f"{name} must be between 0 and 0.9"):
        ControlMapper(**kwargs)


def test_mapper_accepts_the_largest_allowed_parameters() -> None:
    mapper = ControlMapper(deadzone_throttle=0.95, deadzone_steering=0.95, smoothing=0.99)
    assert mapper.map(1.0, -1.0) == ControllerState(-1.0, 1.0, 0.0)
