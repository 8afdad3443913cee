"""The live console shows raw predictions beside the controller values, with FPS and PPS."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from agent.checkpoints.watcher import Rejection
from agent.drive.console import RateMeter, Rates, render
from agent.drive.hotswap import Swap
from agent.drive.status import DriveStatus
from agent.types import ControllerState, Frame, Prediction, Region, Tick
from tests.helpers.clock import FakeClock


def snapshot(**changes) -> DriveStatus:
    values = dict(
        state="driving", model="m", backend="tensorflow", version=None, batches=None, at=10.0,
        frames=0, ticks=0, predictions=0, skipped=0, nonfinite=0, unstucks=0,
    )  # fmt: skip
    return DriveStatus(**{**values, **changes})


def text_of(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_console_shows_raw_and_translated_values_and_rates() -> None:
    frame = Frame(np.zeros((4, 4, 4), np.uint8), captured_at=10.0, seq=7, region=Region(0, 0, 4, 4))
    prediction = Prediction(throttle=-0.4, steering=0.1, seconds=0.004)
    command = ControllerState(steering=0.316, accelerate=0.0, brake=0.4)
    tick = Tick("driving", frame, prediction, command, commanded_at=10.012)
    status = snapshot(model="pilotnet_small/v0002")
    text = text_of(render(status, tick, Rates(fps=29.9, pps=28.5), "game", "Car"))
    assert "[driving]" in text and "pilotnet_small/v0002" in text and "controller game" in text
    assert "-0.400" in text and "+0.100" in text  # raw predictions
    assert "brake +0.400" in text and "stick X +0.316" in text  # translated values
    assert "FPS  29.9" in text and "PPS  28.5" in text
    assert "latency   12.0 ms" in text


def test_console_before_the_first_prediction() -> None:
    text = text_of(render(snapshot(state="starting"), None, Rates(0.0, 0.0), "null", "Car"))
    assert "[starting]" in text and "latency   -" in text


def test_the_swap_line_names_the_last_swap_and_counts_rejections() -> None:
    swaps = (Swap("a", "line/v0002 (10 batches)", "v0002", 10, 1.25, at=7.0),)
    rejections = (Rejection("v0003", "weights truncated", 8.0),)
    status = snapshot(at=19.0, swaps=swaps, rejections=rejections, unstucks=2)
    text = text_of(render(status, None, Rates(0.0, 0.0), "game", "Car", follows_store=True))
    assert "swaps 1, last 12 s ago: a -> line/v0002 (10 batches) (loaded in 1.25 s)" in text
    assert "rejected 1 (last v0003)" in text and "unstucks 2" in text
    quiet = text_of(render(snapshot(), None, Rates(0.0, 0.0), "game", "Car", follows_store=True))
    assert "swaps 0: following the store" in quiet and "unstucks" not in quiet
    pinned = text_of(render(status, None, Rates(0.0, 0.0), "game", "Car", follows_store=False))
    assert "swaps" not in pinned


def test_rates_come_from_two_snapshots_half_a_second_apart_on_the_readers_clock() -> None:
    clock = FakeClock()
    meter = RateMeter(clock)
    assert meter.update(snapshot(frames=100, predictions=90)) == Rates(0.0, 0.0)
    clock.advance(0.49)
    assert meter.update(snapshot(frames=130, predictions=120)) == Rates(0.0, 0.0)  # too soon
    clock.advance(0.01)
    assert meter.update(snapshot(frames=115, predictions=105)) == Rates(30.0, 30.0)
    # A loop that stopped publishing: the same snapshot a second later reads as zero rates.
    clock.advance(1.0)
    assert meter.update(snapshot(frames=115, predictions=105)) == Rates(0.0, 0.0)


def styled_parts(text) -> list[tuple[str, str]]:
    return [(text.plain[span.start : span.end], str(span.style)) for span in text.spans]


def test_the_state_is_coloured_by_how_well_things_go() -> None:
    """Green while driving, yellow paused, magenta while unsticking, red for anything else
    (waiting for the window, starting): a streamer sees trouble at a glance."""
    expected = {
        "driving": "bold green", "paused": "bold yellow", "unstuck": "bold magenta",
        "waiting for window": "bold red", "starting": "bold red",
    }  # fmt: skip
    for state, style in expected.items():
        header, table, _ = render(snapshot(state=state), None, Rates(0, 0), "x", "W").renderables
        assert styled_parts(header) == [("Charles ", "bold"), (f"[{state}]", style)]
        assert header.plain == f"Charles [{state}]  model m  window 'W'  controller x"
        assert table.header_style == "bold" and table.show_header and table.box is None
        assert [column.header for column in table.columns] == [
            "",
            "raw prediction",
            "controller value",
        ]
        assert all(column.justify == "right" for column in table.columns)


def test_the_console_lines_whole() -> None:
    frame = Frame(np.zeros((4, 4, 4), np.uint8), captured_at=10.0, seq=7, region=Region(0, 0, 4, 4))
    tick = Tick(
        "driving", frame, Prediction(throttle=0.25, steering=-0.5, seconds=0.004),
        ControllerState(steering=-0.5, accelerate=0.25, brake=0.0), commanded_at=10.0105,
    )  # fmt: skip
    group = render(snapshot(unstucks=3), tick, Rates(fps=30.04, pps=9.96), "game", "Car")
    assert group.renderables[2].plain == ("FPS  30.0   PPS  10.0   latency   10.5 ms   unstucks 3")
    lines = [line.rstrip() for line in text_of(group.renderables[1]).splitlines()]
    assert lines == [
        "          raw prediction           controller value",
        "throttle          +0.250  accel +0.250 brake +0.000",
        "steering          -0.500             stick X -0.500",
    ]
    empty = render(snapshot(), None, Rates(0, 0), "game", "Car")
    assert empty.renderables[2].plain == "FPS   0.0   PPS   0.0   latency   -"
    lines = [line.rstrip() for line in text_of(empty.renderables[1]).splitlines()]
    assert lines[1:] == [
        "throttle               -   accel - brake -",
        "steering               -         stick X -",
    ]


def test_rates_from_a_loop_that_has_not_published_yet_start_at_zero() -> None:
    clock = FakeClock()
    meter = RateMeter(clock)
    meter.update(None)
    clock.advance(1.0)
    assert meter.update(snapshot(frames=30, predictions=20)) == Rates(30.0, 20.0)


def test_the_swap_line_before_any_swap_and_latency_in_milliseconds() -> None:
    quiet = render(snapshot(), None, Rates(0, 0), "game", "Car", follows_store=True)
    assert quiet.renderables[3].plain == "swaps 0: following the store for newer checkpoints"
    frame = Frame(np.zeros((4, 4, 4), np.uint8), captured_at=10.0, seq=7, region=Region(0, 0, 4, 4))
    tick = Tick("driving", frame, Prediction(0.0, 0.0, 0.004), ControllerState(), 10.1)
    footer = render(snapshot(), tick, Rates(0, 0), "game", "Car").renderables[2]
    assert footer.plain.endswith("latency  100.0 ms")
    assert render(snapshot(), tick, Rates(0, 0), "g", "C").renderables[1].pad_edge is False
