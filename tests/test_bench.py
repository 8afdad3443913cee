"""The benchmark family: `charles bench NAME`, and the rounds and medians they share."""

from __future__ import annotations

import json
import re

import cv2
import pytest

from agent.bench.drive_rounds import Setting, parse_setting, summarise
from agent.bench.rounds import interleaved, median, medians
from agent.cli import main
from agent.errors import CharlesError
from tests.helpers.charles import REPO, assert_one_line_error

CONFIG = str(REPO / "config.toml")

BENCHMARKS = ["model", "drive", "swap", "record", "learn", "pairing", "intake", "live", "soak"]


def test_bench_help_lists_exactly_the_nine_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    # One line per benchmark, indented by four; wrapped help is indented deeper.
    listed = [match[1] for match in re.finditer(r"^    (\S+)", usage, re.MULTILINE)]
    assert listed == BENCHMARKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_takes_json(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", name, "--help"])
    assert "--json" in capsys.readouterr().out


def test_model_bench_is_gone_not_aliased(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["model", "bench", "--seconds", "1"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err


def test_bench_model_reports_rate_and_percentiles_as_json(run_charles) -> None:  # type: ignore[no-untyped-def]
    result = run_charles(
        "bench", "model", "--model", "pilotnet_small", "--seconds", "1", "--json",
        "--checkpoint", "none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # one JSON document, nothing else
    assert report["predictions"] >= 1
    assert report["predictions_per_second"] > 0
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"]
    assert report["model"].startswith("pilotnet_small")


def test_bench_model_refuses_nonsense_arguments(run_charles) -> None:  # type: ignore[no-untyped-def]
    result = run_charles("bench", "model", "--seconds", "0", "--checkpoint", "none")
    assert result.returncode == 2
    assert_one_line_error(result, "argument --seconds: must be a positive number, not '0'")
    assert result.stderr.startswith("usage: charles bench model ")


def test_settings_run_interleaved_round_by_round() -> None:
    calls: list[tuple[str, int]] = []

    def measure(setting: str, number: int) -> str:
        calls.append((setting, number))
        return f"{setting}{number}"

    runs = interleaved(["a", "b", "c"], 2, measure)
    assert calls == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1)]
    assert runs == {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0", "c1"]}


def test_a_median_leaves_unknown_values_out_and_is_none_without_any() -> None:
    assert median([3.0, None, 1.0, None, 2.0]) == 2.0
    assert median([None, 4.0, 1.0]) == 2.5  # of the two known values, not of four
    assert median([1.0, 2.0, 4.0, 5.0]) == 3.0
    assert median([None, None]) is None
    assert median([]) is None
    assert median([1.23456, 2.0, 3.0], digits=None) == 2.0
    assert median([1.23456], digits=3) == 1.235
    assert median([1.23456]) == 1.23


def test_medians_take_each_figure_over_the_runs() -> None:
    runs = [{"pps": 10.0, "p50": None}, {"pps": 30.0, "p50": 4.0}, {"pps": 20.0, "p50": 6.0}]
    figures = {"pps": lambda run: run["pps"], "p50": lambda run: run["p50"]}
    assert medians(runs, figures) == {"pps": 20.0, "p50": 5.0}


def test_a_drive_setting_is_a_name_and_shell_split_flags() -> None:
    setting = parse_setting("model_0005 ort=--model model_0005 --set 'inference.backend=ort'")
    assert setting == Setting(
        "model_0005 ort", ("--model", "model_0005", "--set", "inference.backend=ort")
    )
    assert parse_setting("plain=") == Setting("plain", ())
    for wrong in ("no equals sign", "=--model x", "open='quote"):
        with pytest.raises(CharlesError, match="--setting"):
            parse_setting(wrong)


def test_a_drive_setting_row_holds_medians_and_goal_counts() -> None:
    def report(pps: float, shown_p50: float | None, met: bool) -> dict:
        drive = {"pps": pps, "fps": 30.0, "latency_p50_ms": 3.0, "latency_p95_ms": 5.0,
                 "latency_p99_ms": 6.0, "capture_p50_ms": 0.7, "preprocess_p50_ms": 0.8,
                 "render_to_command_ms": {"p50": shown_p50} if shown_p50 else None}  # fmt: skip
        return {"raw": {"pps": 800.0, "p50_ms": 1.0}, "drive": drive, "pps_ratio": pps / 800,
                "naive": {"pps": 20.0, "p50_ms": 48.0}, "pps_goal_met": met,
                "latency_goal_met": True}  # fmt: skip

    runs = [report(30.0, 31.0, True), report(28.0, None, False), report(29.0, 33.0, True)]
    row = summarise(Setting("tf", ()), runs)
    assert row["drive_pps"] == 29.0
    assert row["shown_p50_ms"] == 32.0  # the run without render-to-command is left out
    assert row["shown_p95_ms"] is None
    assert (row["pps_goal_met"], row["latency_goal_met"]) == (2, 3)
    assert row["runs"] == runs


def test_drive_rounds_refuse_two_settings_of_one_name(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "drive", "--setting", "a=", "--setting", "a=--model pilotnet_small"]
    assert main([*args, "--config", CONFIG]) == 1
    assert "--setting names must differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["drive", "--rounds", "0"], "argument --rounds: must be a positive whole number"),
        (["swap", "--every", "0"], "argument --every: must be a positive number"),
        (["record", "--rounds", "-1"], "argument --rounds: must be a positive whole number"),
        (["pairing", "--seconds", "nan"], "argument --seconds: must be a positive number"),
        (["learn", "--cap", "inf"], "argument --cap: must be a positive number"),
        (["learn", "--policies", "bc,dagr"], "argument --policies: dagr is not a policy"),
        (["model", "--max-predictions", "x"], "argument --max-predictions: must be a positive"),
    ],
)
def test_benchmark_numbers_must_be_positive(
    capsys: pytest.CaptureFixture[str], args: list[str], refused: str
) -> None:
    # Refused as the flags are parsed: before any config is read or anything starts.
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *args, "--config", CONFIG])
    assert exit_.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith(f"charles: error: {refused}"), line


def stamped_layout_jpeg(number: int, capture_size: tuple[int, int]) -> bytes:
    """The live view's /layout.mjpeg JPEG of a capture of a `--stamp` game showing frame
    `number`: the game's own stamp drawing, the recorder's layout renderer, the live view's
    JPEG encoding at its default quality."""
    import pygame

    from agent.game.stamp import draw_stamp
    from agent.live.mjpeg import encode_part
    from agent.record.hud import Status
    from agent.record.layout import Composer, Panels
    from agent.record.pictures import Picture
    from agent.types import Frame, Region

    width, height = capture_size
    surface = pygame.Surface(capture_size)
    surface.fill((90, 140, 60))  # grass: a stamp's black and white cells stand out from it
    draw_stamp(surface, number)
    rgb = pygame.surfarray.array3d(surface).transpose(1, 0, 2)
    frame = Frame(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA), 0.0, 1, Region(0, 0, width, height))
    picture = Composer("layout", capture_size, hud=True, convcam=True).compose(
        frame, None, Status("pilotnet_small"), Panels(convcam_layer="conv")
    )
    part = encode_part(Picture(picture, 0, 1, 0.0), quality=80)
    return part[part.index(b"\xff\xd8") : part.rindex(b"\xff\xd9") + 2]


@pytest.mark.parametrize("capture_size", [(1280, 720), (960, 540)])
def test_glass_to_glass_reads_the_frame_number_back_from_a_layout_jpeg(
    capture_size: tuple[int, int],
) -> None:
    """The stamp survives the layout's shrinking (the game drawn in 880x495) and JPEG; the
    delay runs from when the game showed that frame to when the JPEG arrived."""
    from agent.bench.live import ShownFrames, delays
    from agent.game.channel import FrameRecord
    from agent.types import NEUTRAL

    shown = ShownFrames()
    for frame, at in [(40_000, 10.0), (40_001, 10.033), (40_002, 10.066), (40_003, 10.1)]:
        shown.note(FrameRecord(frame, 1, at, NEUTRAL, None, 0.0, False))
    pictures = [
        (10.080, 0, stamped_layout_jpeg(40_001, capture_size)),  # shown at 10.033: 47 ms
        (10.150, 1, stamped_layout_jpeg(40_003, capture_size)),  # 50 ms
        (10.160, 2, stamped_layout_jpeg(12_345, capture_size)),  # a frame the game never showed
        (10.200, 3, b"not a jpeg"),
    ]
    found, unread = delays(pictures, shown, capture_size)
    assert [round(1000 * d) for d in found] == [47, 50]
    assert unread == 2


def test_a_stamp_names_the_last_showing_of_its_number_before_the_picture_arrived() -> None:
    """Stamps hold 16 bits, so a number comes round every 65536 frames (36 min at 30 fps);
    a picture is of the last showing before it arrived, and only of a recent one."""
    from agent.bench.live import LONGEST_DELAY, ShownFrames
    from agent.game.channel import FrameRecord
    from agent.types import NEUTRAL

    shown = ShownFrames()
    for frame, at in [(7, 100.0), (7 + 65536, 2284.0)]:
        shown.note(FrameRecord(frame, 1, at, NEUTRAL, None, 0.0, False))
    assert shown.shown_at(7, 100.05) == 100.0
    assert shown.shown_at(7, 2284.2) == 2284.0
    assert shown.shown_at(7, 99.9) is None  # not shown yet
    assert shown.shown_at(7, 100.0 + LONGEST_DELAY + 0.01) is None  # a misread, not a delay
    assert shown.shown_at(8, 100.05) is None


def soak_sample(t: float, driving: int, published: int, rejected: tuple[int, ...] = ()) -> dict:
    return {"t": t, "driving": driving, "published": published, "rejected": list(rejected)}


def test_a_soak_counts_a_version_never_swapped_in_as_a_lost_swap() -> None:
    from agent.bench.soak import swaps_lost

    taken = [soak_sample(0, 1, 1), soak_sample(30, 1, 2), soak_sample(60, 2, 3),
             soak_sample(90, 3, 3), soak_sample(120, 3, 4)]  # fmt: skip
    assert swaps_lost(taken) == 0  # v4 is too new to judge
    # v2 is never driven, but v3 supersedes it within the minute: not lost.
    superseded = [soak_sample(0, 1, 2), soak_sample(30, 1, 3), soak_sample(60, 3, 3)]
    assert swaps_lost(superseded) == 0
    stuck = [soak_sample(0, 1, 2), soak_sample(30, 1, 2), soak_sample(60, 1, 2),
             soak_sample(90, 1, 3), soak_sample(150, 1, 3)]  # fmt: skip
    assert swaps_lost(stuck) == 2  # neither v2 nor v3 came
    refused = [soak_sample(0, 1, 2), soak_sample(60, 1, 2, rejected=(2,))]
    assert swaps_lost(refused) == 0  # a rejection is seen, not lost


def test_bench_intake_times_the_watchers_polls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "intake", "--shards", "40", "--rounds", "1", "--json",
                 "--config", CONFIG]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["shards"] == 40
    figures = ["first_poll_ms", "backlog_poll_ms", "idle_poll_ms", "poll_after_new_shard_ms",
               "name_order_listing_ms"]  # fmt: skip
    assert all(result[key] > 0 for key in figures)


def test_live_learning_gives_the_publishing_minute_of_the_first_version_over_each_mark(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from agent.bench.learn import Run
    from agent.bench.learn_live import Evaluation, minutes_to, plot_live

    def scored(version: str, published: float, mean: float) -> Evaluation:
        runs = [Run(version, seed, mean, 100.0, True, 30.0) for seed in (1, 2)]
        return Evaluation(version, 1000, published, published + 1, published + 5, mean, runs)

    # Scored out of order of quality: the 800 mark falls to v0003, although v0004 fell back.
    evaluations = [scored("v0001", 1.5, 120.0), scored("v0002", 6.0, 720.0),
                   scored("v0003", 11.0, 830.0), scored("v0004", 15.2, 790.0)]  # fmt: skip
    assert minutes_to(evaluations) == {"700": 6.0, "800": 11.0, "900": None}
    assert minutes_to([]) == {"700": None, "800": None, "900": None}
    plot_live(tmp_path / "plot.png", evaluations, 15.0)
    picture = cv2.imread(str(tmp_path / "plot.png"))
    assert picture is not None and picture.shape == (500, 800, 3)


def test_live_learning_takes_the_newest_numbered_version(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from agent.bench.learn_live import _newest

    assert _newest(tmp_path / "absent") is None
    for name in ("v0002", "v0010", "v0009", ".staging-x", "notes"):
        (tmp_path / name).mkdir()
    newest = _newest(tmp_path)
    assert newest is not None and newest.name == "v0010"


def test_bench_learn_live_is_not_the_drives_live_view(capsys: pytest.CaptureFixture[str]) -> None:
    """`--live` of `charles bench learn` names the live benchmark, not `charles drive --live`'s
    server (once read as live.address = true, which the config refused). Bad seeds stop it
    right after the config is read, before anything starts."""
    assert main(["bench", "learn", "--live", "--seeds", "x", "--config", CONFIG]) == 1
    err = capsys.readouterr().err
    assert "--seeds takes whole numbers" in err and "live.address" not in err
