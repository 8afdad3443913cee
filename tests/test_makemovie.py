"""`charles makemovie`: the layout, the picture, the MP4 a real checkpoint makes, and errors."""

from __future__ import annotations

import argparse
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from agent.config import Config, DataConfig, ModelConfig
from agent.errors import CharlesError
from agent.learn.makemovie import (
    KINDS,
    OUTPUTS,
    PREDICTED_COLOUR,
    RECORDED_COLOUR,
    Box,
    Controls,
    Layout,
    add_arguments,
    compose,
    layout_for,
    make_movie,
    run,
)
from agent.learn.shard_writer import ShardWriter
from agent.record import draw
from tests.helpers.drives import publish_constant_driver

SHAPE = (90, 160, 3)
PREDICTED = Controls(throttle=0.5, steering=-0.25)
"""What the published constant driver predicts on any frame."""
# Samples in time order: (time, throttle, steering, RGB colour of the whole frame). Two shards
# whose times interleave, so the movie's order is the times', not the shards'.
SAMPLES = [
    (10.0, 0.9, 0.7, (200, 30, 30)),
    (11.0, -0.6, -0.8, (30, 200, 30)),
    (12.0, 0.2, 0.5, (30, 30, 200)),
    (13.0, -0.3, -0.6, (200, 200, 30)),
    (14.0, 0.7, 0.4, (30, 200, 200)),
    (15.0, -0.9, -0.5, (200, 30, 200)),
]
SHARD_TIMES = ([10.0, 12.0, 14.0], [11.0, 13.0, 15.0])
VIDEO_TOLERANCE = 40
"""Per BGR channel: H.264 in yuv420p gives flat colours back only approximately."""


def write_samples(folder: Path) -> None:
    by_time = {time: sample for time, *sample in SAMPLES}
    for times in SHARD_TIMES:  # one writer per shard: the first shard's name sorts first
        with ShardWriter(folder, "test", SHAPE, samples_per_shard=len(times)) as writer:
            for time in times:
                throttle, steering, rgb = by_time[time]
                frame = np.empty(SHAPE, dtype=np.uint8)
                frame[:] = rgb
                writer.add(frame, throttle, steering, float("nan"), time, (True, True))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """A data folder of SAMPLES and a store whose latest checkpoint predicts PREDICTED."""
    root = tmp_path_factory.mktemp("makemovie")
    write_samples(root / "data")
    publish_constant_driver(root / "models", PREDICTED.throttle, PREDICTED.steering)
    config = Config(
        model=ModelConfig(line="pilotnet_small", store=str(root / "models")),
        data=DataConfig(folder=str(root / "data")),
    )
    return config, root


def decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def assert_colour(
    picture: np.ndarray, x: int, y: int, colour: tuple, tolerance: int, what: str
) -> None:
    found = picture[y, x].astype(int)
    assert np.abs(found - np.array(colour)).max() <= tolerance, (
        f"{what}: pixel ({x}, {y}) is {found.tolist()}, not about {list(colour)}"
    )


def assert_bar(
    picture: np.ndarray, box: Box, value: float, colour: tuple, tolerance: int, what: str
) -> None:
    """A centred bar for `value` in `box`: `colour` from the centre towards value's side, as
    far as |value| of the half-width, the track colour beyond it and on the other side.

    Pixels are taken in the middle of each stretch, never at an edge."""
    half = box.width // 2
    centre, y = box.left + half, box.top + box.height // 2
    side = 1 if value > 0 else -1
    reach = abs(value) * half
    assert reach >= 16, "a value this small leaves no middle to look at"
    assert_colour(picture, centre + side * round(reach / 2), y, colour, tolerance, what)
    assert_colour(picture, centre - side * half // 2, y, draw.TRACK, tolerance, f"{what} (other)")
    if abs(value) <= 0.8:
        beyond = centre + side * round((reach + half) / 2)
        assert_colour(picture, beyond, y, draw.TRACK, tolerance, f"{what} (beyond)")


def assert_picture(
    picture: np.ndarray, layout: Layout, sample: tuple, tolerance: int, what: str
) -> None:
    """The frame's colour (RGB shown as BGR) in the picture box, and all four bars."""
    _, throttle, steering, rgb = sample
    box = layout.picture
    x, y = box.left + box.width // 2, box.top + box.height // 2
    assert_colour(picture, x, y, rgb[::-1], tolerance, f"{what} picture")
    recorded = Controls(throttle, steering)
    for output in OUTPUTS:
        for kind, values, colour in (
            ("recorded", recorded, RECORDED_COLOUR),
            ("predicted", PREDICTED, PREDICTED_COLOUR),
        ):
            value = getattr(values, output)
            bar = layout.bars[output, kind]
            assert_bar(picture, bar, value, colour, tolerance, f"{what} {kind} {output}")


# --- layout and picture, without video -------------------------------------------------------


def test_colours_are_far_enough_apart_for_the_video_checks() -> None:
    colours = [RECORDED_COLOUR, PREDICTED_COLOUR, draw.TRACK]
    for i, first in enumerate(colours):
        for second in colours[i + 1 :]:
            assert np.abs(np.subtract(first, second)).max() > 2 * VIDEO_TOLERANCE


@pytest.mark.parametrize("shape", [(90, 160, 3), (270, 480, 3), (91, 161, 3)])
@pytest.mark.parametrize("scale", [1, 3, 8])
def test_layout_is_even_and_nothing_overlaps(shape: tuple[int, int, int], scale: int) -> None:
    layout = layout_for(shape, scale)
    assert layout.width % 2 == 0 and layout.height % 2 == 0
    picture = layout.picture
    assert (picture.width, picture.height) == (shape[1] * scale, shape[0] * scale)
    assert picture.left >= 0 and picture.left + picture.width <= layout.width
    bars = [layout.bars[output, kind] for output in OUTPUTS for kind in KINDS]
    for bar in bars:
        assert bar.top >= picture.top + picture.height  # below the picture
        assert bar.left + bar.width <= layout.width and bar.top + bar.height <= layout.height
        assert bar.width >= 200 and bar.height >= 8
    # Throttle above steering, recorded above predicted, none overlapping the next.
    assert all(lower.top >= upper.top + upper.height for upper, lower in pairwise(bars))


def test_compose_draws_the_frame_and_each_bar_exactly() -> None:
    layout = layout_for(SHAPE, 3)
    for sample in SAMPLES:
        frame = np.empty(SHAPE, dtype=np.uint8)
        frame[:] = sample[3]
        frame[0, 0] = (0, 0, 0)  # one dark input pixel: a 3x3 dark block, nearest neighbour
        recorded = Controls(sample[1], sample[2])
        picture = compose(layout, frame, recorded, PREDICTED, ("a", "b", "c"))
        assert picture.shape == (layout.height, layout.width, 3) and picture.dtype == np.uint8
        assert_picture(picture, layout, sample, 0, f"sample at {sample[0]}")
        left, top = layout.picture.left, layout.picture.top
        assert not picture[top : top + 3, left : left + 3].any()
        assert (picture[top + 3, left + 3] == sample[3][::-1]).all()


# --- the movie -------------------------------------------------------------------------------


def test_movie_shows_every_sample_in_time_order_recorded_and_predicted(
    world: tuple[Config, Path],
) -> None:
    config, root = world
    out = root / "movies" / "all.mp4"
    summary = make_movie(config, out, scale=3)

    layout = layout_for(SHAPE, 3)
    frames = decode(out)
    assert len(frames) == len(SAMPLES) == summary.samples
    for index, (frame, sample) in enumerate(zip(frames, SAMPLES, strict=True)):
        assert frame.shape == (layout.height, layout.width, 3)
        assert_picture(frame, layout, sample, VIDEO_TOLERANCE, f"frame {index}")
    assert summary.out == out and summary.shards == 2 and summary.skipped_shards == 0
    assert summary.seconds == pytest.approx(len(SAMPLES) / config.record.fps)
    assert "v0001" in summary.checkpoint  # the store's checkpoint, not the shipped reference
    assert summary.encoder in ("libx264", "h264_nvenc")
    throttles, steerings = np.array([s[1] for s in SAMPLES]), np.array([s[2] for s in SAMPLES])
    assert summary.mae_throttle == pytest.approx(np.abs(throttles - 0.5).mean(), abs=1e-4)
    assert summary.mae_steering == pytest.approx(np.abs(steerings + 0.25).mean(), abs=1e-4)


def test_run_makes_a_range_of_samples_and_prints_one_line(
    world: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, root = world
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = root / "range.mp4"
    args = parser.parse_args(["--out", str(out), "--start", "2", "--end", "6", "--limit", "3"])
    assert args.scale == 3
    args.scale = 1
    assert run(args, config) == 0

    layout = layout_for(SHAPE, 1)
    frames = decode(out)
    assert len(frames) == 3  # samples 2, 3, 4: --limit cuts --end's range
    for index, frame in enumerate(frames):
        assert frame.shape == (layout.height, layout.width, 3)
        assert_picture(frame, layout, SAMPLES[2 + index], VIDEO_TOLERANCE, f"frame {index}")
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "3 samples from 2 shards" in printed[0], printed
    assert str(out) in printed[0] and "mean absolute error" in printed[0]


def test_parser_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.out, args.start, args.end, args.scale, args.limit) == (
        Path("makemovie.mp4"), None, None, 3, None
    )  # fmt: skip


# --- mistakes --------------------------------------------------------------------------------


def test_missing_or_empty_data_folder_is_one_clear_error(tmp_path: Path) -> None:
    config = Config(data=DataConfig(folder=str(tmp_path / "nowhere")))
    with pytest.raises(CharlesError, match=r"no samples in .*nowhere.*charles collect"):
        make_movie(config, tmp_path / "movie.mp4")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a shard")
    config = Config(data=DataConfig(folder=str(tmp_path / "empty")))
    with pytest.raises(CharlesError, match=r"no samples in .*empty.*charles collect") as caught:
        make_movie(config, tmp_path / "movie.mp4")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "movie.mp4").exists()


def test_shards_of_another_model_line_are_no_samples(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "data", "test", (270, 480, 3), samples_per_shard=1) as writer:
        writer.add(np.zeros((270, 480, 3), np.uint8), 0.0, 0.0, float("nan"), 1.0, (True, True))
    config = Config(data=DataConfig(folder=str(tmp_path / "data")))
    with pytest.raises(CharlesError, match=r"1 unusable shards.*pilotnet_small"):
        make_movie(config, tmp_path / "movie.mp4")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scale": 0}, "--scale must be a whole number from 1 to 8"),
        ({"scale": 9}, "--scale must be a whole number from 1 to 8"),
        ({"start": -1}, "--start must be a sample number"),
        ({"limit": 0}, "--limit must be at least 1"),
        ({"start": 6}, "--start 6 is past the last sample: .* holds 6 samples"),
        ({"end": 7}, "--end 7 is past the end: .* holds 6 samples"),
        ({"start": 3, "end": 3}, "--end 3 must be after --start 3"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_model_loads(
    world: tuple[Config, Path], options: dict, message: str
) -> None:
    config, root = world
    with pytest.raises(CharlesError, match=message) as caught:
        make_movie(config, root / "never.mp4", **options)
    assert "\n" not in str(caught.value)
    assert not (root / "never.mp4").exists()


def test_unwritable_out_is_one_clear_error(world: tuple[Config, Path]) -> None:
    config, root = world
    with pytest.raises(CharlesError, match="is a folder; give a file name"):
        make_movie(config, root)
    blocker = root / "a-file"
    blocker.write_text("")
    with pytest.raises(
        CharlesError, match=r"cannot write --out .*a-file/movie.mp4 \(.*a-file is a file\)"
    ):
        make_movie(config, blocker / "movie.mp4")
