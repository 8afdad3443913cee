"""The drive summary: typed records inside, the same JSON outside (the benchmarks read it)."""

from __future__ import annotations

import json
from dataclasses import replace

from agent.checkpoints.watcher import Rejection
from agent.drive.hotswap import Swap
from agent.drive.summary import (
    CommandGaps,
    DriveSummary,
    ShownToCommand,
    command_gaps,
    median_ms,
    percentiles_ms,
    rejection_rows,
    swap_rows,
)
from agent.game.telemetry import TelemetryRecord, record_from
from agent.record.recorder import RecordingReport

GAME = {
    "t": 12.5, "episode": 1, "speed": 20.0, "on_track": True, "score": 321.5, "distance": 250.0,
    "tiles": 0.42, "heading": 1.5, "steering": 0.1, "accelerate": 0.5, "brake": 0.0,
    "source": "gamepad", "paused": False, "resets": 0, "x": 1.0, "y": 2.0,
}  # fmt: skip


def made_up_summary() -> DriveSummary:
    started = 100.0
    swaps = [Swap("a (fresh)", "line/v0002 (10 batches)", "v0002", 10, 1.23456, at=105.004)]
    rejections = [Rejection("v0003", "weights truncated", 107.5)]
    return DriveSummary(
        model="line/v0002 (10 batches)", started_with="a (fresh)", controller="game",
        window="Charles CarRacing", stopped_by="time limit", seconds=10.0, frames=300,
        predictions=290, fps=30.0, pps=29.0, latency_p50_ms=6.4, latency_p95_ms=13.0,
        predict_p50_ms=3.0, skipped_frames=10, nonfinite_predictions=0, deadman_releases=1,
        game=record_from(GAME), swaps=swap_rows(swaps, started),
        rejections=rejection_rows(rejections, started), unstucks=2,
        command_gaps=command_gaps([100.0, 100.033, 100.066, 100.2], [(100.05, 100.1)]),
        recordings=(RecordingReport("r.mp4", 10.0, 300, 300, 1, 2, 0, "libx264", 1.0, 2.0),),
        render_to_command_ms=ShownToCommand(41.0, 60.0, 70.0, 280, 290, 5, 3, 2, "stamped"),
    )  # fmt: skip


def test_the_json_keeps_the_keys_and_shapes_readers_rely_on() -> None:
    values = json.loads(json.dumps(made_up_summary().to_json()))
    assert values["swaps"] == [
        {"from": "a (fresh)", "to": "line/v0002 (10 batches)", "version": "v0002",
         "batches": 10, "load_s": 1.235, "at_s": 5.0}
    ]  # fmt: skip
    assert values["rejections"] == [
        {"version": "v0003", "reason": "weights truncated", "at_s": 7.5}
    ]
    assert values["command_gaps"] == {
        "count": 3, "median_ms": 33.0, "largest_outside_ms": 33.0, "during_swaps": 2,
        "largest_during_ms": 134.0, "pps_during": 11.98, "pps_outside": 30.3,
    }  # fmt: skip
    assert values["render_to_command_ms"]["p50"] == 41.0
    assert values["render_to_command_ms"]["pictures"] == "stamped"
    assert values["recordings"][0]["path"] == "r.mp4" and values["recordings"][0]["error"] is None
    assert values["game"] == GAME
    assert values["deadman_releases"] == 1 and values["unstucks"] == 2


def test_the_lines_a_person_reads() -> None:
    text = "\n".join(made_up_summary().lines())
    assert "drove 'Charles CarRacing' with line/v0002 (10 batches) via game for 10.0 s" in text
    assert (
        "swap at 5.0 s: a (fresh) -> line/v0002 (10 batches) (loaded and checked in 1.24 s" in text
    )
    assert "rejected v0003 at 7.5 s: weights truncated" in text
    assert "command gaps: median 33.0 ms, largest 33.0 ms outside swaps, 134.0 ms during" in text
    assert "game picture shown->command in its physics p50 41.0 ms  p95 60.0 ms" in text
    assert "recorded r.mp4: 10.0 s, 300 frames (1 repeated, 2 captured frames left out" in text
    assert "game: score 321.5  distance 250.0 m  tiles 42%  episode 1" in text
    assert "controls went neutral by themselves 1 time(s)" in text


def test_gaps_overlapping_a_load_count_as_during_swaps() -> None:
    gaps = command_gaps([0.0, 0.1, 0.2, 0.3], [(0.15, 0.16)])
    assert isinstance(gaps, CommandGaps)
    assert (gaps.count, gaps.during_swaps) == (3, 1)
    assert command_gaps([0.0], []) is None


def test_a_telemetry_line_of_another_shape_is_no_record() -> None:
    assert isinstance(record_from(GAME), TelemetryRecord)
    assert record_from({**GAME, "extra": 1}) == record_from(GAME)
    assert record_from({"t": 1.0}) is None
    assert record_from(None) is None


def test_percentiles_and_medians_are_in_milliseconds_rounded_and_none_when_empty() -> None:
    seconds = [0.001, 0.002, 0.003, 0.004, 0.0101234]
    assert percentiles_ms(seconds, (50, 100)) == [3.0, 10.12]
    assert median_ms(seconds) == 3.0
    assert percentiles_ms([], (50, 95)) == [None, None]
    assert median_ms([]) is None


def test_every_line_a_person_reads_whole() -> None:
    """Each line as printed, so a changed word, unit or rounding shows."""
    base = made_up_summary()
    assert base.lines() == [
        "drove 'Charles CarRacing' with line/v0002 (10 batches) via game for 10.0 s "
        "(stopped by time limit)",
        "  frames 300  predictions 290  FPS 30.0  PPS 29.0  (tensorflow)",
        "  latency capture->command p50 6.4 ms  p95 13.0 ms  (model 3.0 ms, grab -, "
        "preprocess -)  frames skipped while predicting 10",
        "  latency game picture shown->command in its physics p50 41.0 ms  p95 60.0 ms  "
        "(280 commands matched)",
        "  controls went neutral by themselves 1 time(s): no command came within controller.hold",
        "  swap at 5.0 s: a (fresh) -> line/v0002 (10 batches) (loaded and checked in 1.24 s "
        "beside driving)",
        "  rejected v0003 at 7.5 s: weights truncated",
        "  command gaps: median 33.0 ms, largest 33.0 ms outside swaps, 134.0 ms during swaps",
        "  unstuck: 2 recovery(ies) from a car standing still",
        "  recorded r.mp4: 10.0 s, 300 frames (1 repeated, 2 captured frames left out, 0 dropped "
        "by a slow encoder; libx264; CPU 1.0 s drawing, 2.0 s encoding)",
        "  game: score 321.5  distance 250.0 m  tiles 42%  episode 1",
    ]
    failed = RecordingReport("r.mp4", 1.0, 30, 30, 0, 0, 0, "libx264", 0.1, 0.2, "disk full")
    timed = replace(
        base, capture_p50_ms=1.25, preprocess_p50_ms=0.5, nonfinite_predictions=3,
        recordings=(failed,),
    )  # fmt: skip
    lines = timed.lines()
    assert "(model 3.0 ms, grab 1.2 ms, preprocess 0.5 ms)" in lines[2]
    assert "  non-finite predictions (sent neutral): 3" in lines
    assert lines[-3:-1] == [
        "  recorded r.mp4: 1.0 s, 30 frames (0 repeated, 0 captured frames left out, 0 dropped "
        "by a slow encoder; libx264; CPU 0.1 s drawing, 0.2 s encoding)",
        "    recording failed: disk full",
    ]


def test_a_quiet_drive_prints_only_what_happened() -> None:
    """No latency numbers, no game, no swaps, no gaps during swaps: two lines, nothing empty."""
    quiet = replace(
        made_up_summary(), latency_p50_ms=None, render_to_command_ms=None, deadman_releases=0,
        swaps=(), rejections=(), unstucks=0, recordings=(), game=None,
        command_gaps=command_gaps([0.0, 0.1, 0.2], []),
    )  # fmt: skip
    assert quiet.lines() == [
        "drove 'Charles CarRacing' with line/v0002 (10 batches) via game for 10.0 s "
        "(stopped by time limit)",
        "  frames 300  predictions 290  FPS 30.0  PPS 29.0  (tensorflow)",
    ]
    half = replace(quiet, latency_p50_ms=6.4, latency_p95_ms=None)
    assert len(half.lines()) == 2
    unmatched = ShownToCommand(None, None, None, 0, 290, 0, 0, 0, "stamped")
    assert len(replace(quiet, render_to_command_ms=unmatched).lines()) == 2


def test_command_gaps_worked_out_by_hand() -> None:
    # Gaps 100, 50, 250, 100 ms; a load from 0.16 to 0.18 lies inside the third gap only,
    # and a load that ends exactly when a gap starts touches it (boundaries count).
    gaps = command_gaps([0.0, 0.1, 0.15, 0.4, 0.5], [(0.16, 0.18), (-1.0, 0.0)])
    assert gaps == CommandGaps(
        count=4, median_ms=75.0, largest_outside_ms=100.0, during_swaps=2,
        largest_during_ms=250.0, pps_during=5.71, pps_outside=13.33,
    )  # fmt: skip
    # Without loads nothing is during swaps; with every gap during one, the median is over all.
    assert command_gaps([0.0, 0.1, 0.3], []) == CommandGaps(
        count=2, median_ms=150.0, largest_outside_ms=200.0, during_swaps=0,
        largest_during_ms=None, pps_during=None, pps_outside=6.67,
    )  # fmt: skip
    assert command_gaps([0.0, 0.1, 0.3], [(0.0, 0.3)]) == CommandGaps(
        count=2, median_ms=150.0, largest_outside_ms=None, during_swaps=2,
        largest_during_ms=200.0, pps_during=6.67, pps_outside=None,
    )  # fmt: skip
    assert command_gaps([0.0, 0.1], [(0.1, 0.2)]).during_swaps == 1  # type: ignore[union-attr]
    assert command_gaps([], []) is None


def test_game_restarts_are_in_the_json_and_told_when_there_were_any() -> None:
    base = made_up_summary()
    assert base.to_json()["game_restarts"] == 0
    assert not any("restarted" in line for line in base.lines())
    restarted = replace(base, game_restarts=2)
    assert json.loads(json.dumps(restarted.to_json()))["game_restarts"] == 2
    assert (
        "  game restarted 2 time(s): it ended (a crash, a kill, closed) and was started again"
        in restarted.lines()
    )


def test_times_are_rounded_to_hundredths_of_a_millisecond_or_second() -> None:
    gaps = command_gaps([0.0, 0.0123456, 0.0456789, 0.1], [(0.05, 0.06)])
    assert gaps == CommandGaps(
        count=3, median_ms=22.84, largest_outside_ms=33.33, during_swaps=1,
        largest_during_ms=54.32, pps_during=18.41, pps_outside=43.78,
    )  # fmt: skip
    swap = Swap("a", "b", "v0002", 10, 1.23456, at=105.504444)
    assert swap_rows([swap], 100.0)[0].at_s == 5.5
    assert rejection_rows([Rejection("v0003", "r", 107.50444)], 100.0)[0].at_s == 7.5
    assert percentiles_ms([1, 2], (50,)) == [1500.0]  # integer seconds are seconds too
    done = replace(made_up_summary(), game=record_from({**GAME, "tiles": 1.0}))
    assert "tiles 100%" in done.lines()[-1]
