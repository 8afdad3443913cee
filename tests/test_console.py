"""The live console shows raw predictions beside the controller values, with FPS and PPS."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from agent.drive.console import Rates, render
from agent.types import ControllerState, Frame, Prediction, Region, Tick


def text_of(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_console_shows_raw_and_translated_values_and_rates() -> None:
    frame = Frame(np.zeros((4, 4, 4), np.uint8), captured_at=10.0, seq=7, region=Region(0, 0, 4, 4))
    prediction = Prediction(throttle=-0.4, steering=0.1, seconds=0.004)
    command = ControllerState(steering=0.316, accelerate=0.0, brake=0.4)
    tick = Tick("driving", frame, prediction, command, commanded_at=10.012)
    text = text_of(render(tick, Rates(fps=29.9, pps=28.5), "pilotnet_small/v0002", "game", "Car"))
    assert "[driving]" in text and "pilotnet_small/v0002" in text and "controller game" in text
    assert "-0.400" in text and "+0.100" in text  # raw predictions
    assert "brake +0.400" in text and "stick X +0.316" in text  # translated values
    assert "FPS  29.9" in text and "PPS  28.5" in text
    assert "latency   12.0 ms" in text


def test_console_before_the_first_prediction() -> None:
    text = text_of(render(None, Rates(0.0, 0.0), "m", "null", "Car"))
    assert "[starting]" in text and "latency   -" in text
