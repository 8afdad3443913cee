"""`charles makemovie`: a video of collected samples with recorded and predicted controls.

Like donkeycar's `makemovie`: every sample of the data folder (or a range of them), in time
order, is shown as the model saw it (its input frame, scaled up), with a panel below it: for
throttle and for steering one bar for the recorded label and one for what a checkpoint
predicts on that very frame, and the numbers. Watching it shows where a checkpoint disagrees
with its teacher, which a mean error alone never does.

One video frame per sample at `record.fps`: samples are not on a wall clock (balancing drops
some, and several collectors may fill one folder), so the video's time is sample count, not
seconds of driving.

Memory: only the samples' times and labels are kept for the whole folder; frames are read a
shard at a time, when the first of its samples is due, and dropped after its last one.
"""

from __future__ import annotations

import argparse
import logging
import math
import time as clock
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from agent.config import Config
from agent.errors import CharlesError
from agent.files import free_names
from agent.learn.shard_format import read_shard
from agent.learn.shard_watcher import ShardWatcher
from agent.nets.registry import get_line
from agent.record import draw
from agent.record.writer import (
    RecordingError,
    VideoFile,
    VideoOutput,
    create_free,
    even_size,
    refuse_link_or_special,
)

log = logging.getLogger(__name__)

SCALES = range(1, 9)
"""--scale: screen pixels per input pixel."""
RECORDED_COLOUR = draw.BLUE
"""BGR of a recorded label's bar (the HUD's steering colour)."""
PREDICTED_COLOUR = draw.ORANGE
"""BGR of a predicted value's bar (draw's "second value beside the first")."""
OUTPUTS = ("throttle", "steering")
KINDS = ("recorded", "predicted")

# The panel's measures at a canvas PANEL_MIN_WIDTH wide; wider canvases scale them up.
PANEL_MIN_WIDTH = 480
_MARGIN = 8
_ROW = 20
_BAR_HEIGHT = 12
_LABEL_WIDTH = 84
_NUMBER_WIDTH = 64
_TEXT_SCALE = 0.45
_CAPTION_ROWS = 3  # sample, shard, checkpoint
_ROWS = _CAPTION_ROWS + len(OUTPUTS) * (1 + len(KINDS))  # per output: a heading, two bars
_PROGRESS_SECONDS = 10.0


class Box(NamedTuple):
    """A rectangle on the picture, in pixels."""

    left: int
    top: int
    width: int
    height: int


class Controls(NamedTuple):
    """Throttle and steering, each in [-1, 1]."""

    throttle: float
    steering: float


@dataclass(frozen=True)
class Layout:
    """Where everything goes on a video picture (BGR, `height` x `width`, both even)."""

    width: int
    height: int
    picture: Box
    """The input frame scaled up, at the top."""
    rows: tuple[Box, ...]
    """The panel's rows below it: captions, then per output a heading and one bar per kind."""
    bars: dict[tuple[str, str], Box]
    """(output, kind) -> the bar's box, e.g. ("steering", "predicted")."""
    label_left: int
    number_left: int
    text_scale: float


def layout_for(input_shape: tuple[int, int, int], scale: int) -> Layout:
    """The layout for frames of `input_shape` (H, W, 3) shown at `scale` screen pixels each."""
    picture_w, picture_h = input_shape[1] * scale, input_shape[0] * scale
    # Text needs room: a small picture (pilotnet_small at --scale 1) gets a wider panel.
    width = max(picture_w, PANEL_MIN_WIDTH)
    unit = width / PANEL_MIN_WIDTH

    def px(base: int) -> int:
        return round(base * unit)

    margin, row_h, bar_h = px(_MARGIN), px(_ROW), px(_BAR_HEIGHT)
    panel_top = picture_h + margin
    rows = tuple(Box(0, panel_top + i * row_h, width, row_h) for i in range(_ROWS))
    bar_left = margin + px(_LABEL_WIDTH)
    bar_w = width - bar_left - px(_NUMBER_WIDTH) - margin
    bars: dict[tuple[str, str], Box] = {}
    for o, output in enumerate(OUTPUTS):
        for k, kind in enumerate(KINDS):
            row = rows[_CAPTION_ROWS + o * (1 + len(KINDS)) + 1 + k]
            bars[output, kind] = Box(bar_left, row.top + (row_h - bar_h) // 2, bar_w, bar_h)
    # H.264 in yuv420p needs even sides: pad by one pixel where needed.
    width, height = even_size(width + 1, rows[-1].top + row_h + margin + 1)
    return Layout(
        width=width,
        height=height,
        picture=Box((width - picture_w) // 2, 0, picture_w, picture_h),
        rows=rows,
        bars=bars,
        label_left=margin,
        number_left=bar_left + bar_w + margin,
        text_scale=_TEXT_SCALE * unit,
    )


def compose(
    layout: Layout,
    frame_rgb: np.ndarray,
    recorded: Controls,
    predicted: Controls,
    captions: tuple[str, str, str],
) -> np.ndarray:
    """One video picture: `frame_rgb` scaled up (nearest neighbour) and the panel, in BGR."""
    canvas = np.zeros((layout.height, layout.width, 3), dtype=np.uint8)
    box = layout.picture
    # Nearest neighbour: the model's input shown as the pixels it is, not smoothed.
    scaled = cv2.resize(frame_rgb, (box.width, box.height), interpolation=cv2.INTER_NEAREST)
    canvas[box.top : box.top + box.height, box.left : box.left + box.width] = cv2.cvtColor(
        scaled, cv2.COLOR_RGB2BGR
    )

    size = layout.text_scale

    def baseline(box: Box) -> int:
        return box.top + box.height // 2 + round(11 * size)  # text 22 * size tall, centred

    for row, caption in zip(layout.rows[:_CAPTION_ROWS], captions, strict=True):
        draw.text(canvas, caption, layout.label_left, baseline(row), size, draw.GREY)
    values = {"recorded": recorded, "predicted": predicted}
    colours = {"recorded": RECORDED_COLOUR, "predicted": PREDICTED_COLOUR}
    for o, output in enumerate(OUTPUTS):
        heading = layout.rows[_CAPTION_ROWS + o * (1 + len(KINDS))]
        draw.text(canvas, output, layout.label_left, baseline(heading), size)
        for kind in KINDS:
            bar = layout.bars[output, kind]
            value = getattr(values[kind], output)
            colour = colours[kind]
            draw.centred_bar(canvas, value, *bar, colour)
            draw.text(canvas, kind, layout.label_left, baseline(bar), size, colour)
            draw.text(canvas, f"{value:+.3f}", layout.number_left, baseline(bar), size, colour)
    return canvas


@dataclass(frozen=True)
class MovieSummary:
    """What `make_movie` wrote."""

    out: Path
    samples: int
    shards: int
    """Shards the samples shown came from."""
    seconds: float
    """Length of the video (one frame per sample at record.fps)."""
    mae_throttle: float
    """Mean absolute error, recorded vs predicted, over the samples shown (finite predictions);
    NaN when no prediction was finite."""
    mae_steering: float
    checkpoint: str
    encoder: str
    skipped_shards: int = 0
    """Shards in the data folder that could not be used (each logged as a warning)."""
    nonfinite_predictions: int = 0

    def line(self) -> str:
        """The summary as one line of text."""
        extra = ""
        if self.skipped_shards:
            extra += f"; {self.skipped_shards} unusable shards skipped"
        if self.nonfinite_predictions:
            extra += f"; {self.nonfinite_predictions} non-finite predictions"
        return (
            f"{self.out}: {self.samples} samples from {self.shards} shards, "
            f"{self.seconds:.1f} s of video ({self.encoder}); {self.checkpoint}: mean absolute "
            f"error throttle {self.mae_throttle:.3f}, steering {self.mae_steering:.3f}{extra}"
        )


@dataclass(frozen=True)
class _ShardIndex:
    """What is kept of a shard for the whole run: no frames."""

    path: Path
    time: np.ndarray
    throttle: np.ndarray
    steering: np.ndarray


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """makemovie's own flags (--data and the model flags come from the CLI's shared parsers)."""
    parser.add_argument(
        "--out", type=Path, default=Path("makemovie.mp4"), help="MP4 to write (%(default)s)"
    )
    parser.add_argument(
        "--start", type=int, metavar="N", help="first sample, counted in time order from 0"
    )
    parser.add_argument("--end", type=int, metavar="N", help="stop before this sample")
    parser.add_argument(
        "--scale", type=int, default=3, metavar="N",
        help="screen pixels per input pixel, 1 to 8 (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, metavar="N", help="at most this many samples")


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles makemovie` handler: make the movie, print its summary."""
    summary = make_movie(config, args.out, args.start, args.end, args.scale, args.limit)
    print(f"makemovie: {summary.line()}")
    return 0


def make_movie(
    config: Config,
    out: Path,
    start: int | None = None,
    end: int | None = None,
    scale: int = 3,
    limit: int | None = None,
) -> MovieSummary:
    """Render samples [start, end) of `config.data.folder`, in time order (at most `limit`),
    with `config.model`'s checkpoint (resolved as `charles drive` does) into the MP4 `out`."""
    # Cheap checks first: nothing is read or loaded for a mistyped flag.
    if scale not in SCALES:
        raise CharlesError(f"--scale must be a whole number from 1 to 8, not {scale}")
    for flag, value in (("--start", start), ("--end", end)):
        if value is not None and value < 0:
            raise CharlesError(f"{flag} must be a sample number from 0 up, not {value}")
    if limit is not None and limit < 1:
        raise CharlesError(f"--limit must be at least 1, not {limit}")
    out = Path(out)
    if out.is_dir():
        raise CharlesError(f"--out {out} is a folder; give a file name, e.g. {out / 'movie.mp4'}")
    refuse_link_or_special(out, "--out", "give the name of a new or plain file")

    line = get_line(config.model.line)
    folder = Path(config.data.folder)
    shards, skipped = _index_shards(folder, line.input_shape, line.name)
    times = np.concatenate([shard.time for shard in shards])
    first, stop = _sample_range(start, end, limit, len(times), folder)
    shard_of, row_of = _time_order(shards, times, first, stop)

    from agent.checkpoints.reference import checkpoint_to_drive
    from agent.inference.predictor import Predictor  # TensorFlow: only once the cheap checks passed

    predictor = Predictor.load(line.name, checkpoint_to_drive(config), config.model.pretrained)
    layout = layout_for(line.input_shape, scale)
    encoder = config.record.encoder
    output = _create(out)
    try:
        video = VideoFile(output, layout.width, layout.height, config.record.fps, encoder)
    except BaseException:
        output.close()
        raise
    out = output.path
    time_zero = times.min()
    errors = np.full((len(shard_of), 2), np.nan)
    log.info(
        "makemovie: %d samples of %s with %s into %s", len(shard_of), folder, predictor.name, out
    )
    progress_at = clock.monotonic() + _PROGRESS_SECONDS
    try:
        try:
            frames = _frames(shards, shard_of, row_of, line.input_shape)
            for position, frame in enumerate(frames):
                shard, row = shards[shard_of[position]], int(row_of[position])
                recorded = Controls(float(shard.throttle[row]), float(shard.steering[row]))
                prediction = predictor.predict(frame)
                predicted = Controls(prediction.throttle, prediction.steering)
                errors[position] = np.abs(np.subtract(predicted, recorded))
                captions = (
                    f"sample {first + position} ({position + 1} of {len(shard_of)}), "
                    f"t {shard.time[row] - time_zero:.2f} s",
                    f"{shard.path.name} [{row}]",
                    predictor.name,
                )
                video.write(compose(layout, frame, recorded, predicted, captions), position)
                if clock.monotonic() >= progress_at:
                    progress_at += _PROGRESS_SECONDS
                    log.info("makemovie: %d of %d samples", position + 1, len(shard_of))
        finally:
            video.close()
    except RecordingError as error:  # e.g. a full disk: the movie plays up to there
        raise CharlesError(f"makemovie stopped writing {out}: {error}") from None

    finite = np.isfinite(errors).all(axis=1)
    mae = errors[finite].mean(axis=0) if finite.any() else np.array([math.nan, math.nan])
    return MovieSummary(
        out=out,
        samples=len(shard_of),
        shards=len(set(shard_of.tolist())),
        seconds=len(shard_of) / config.record.fps,
        mae_throttle=float(mae[0]),
        mae_steering=float(mae[1]),
        checkpoint=predictor.name,
        encoder=video.encoder,
        skipped_shards=skipped,
        nonfinite_predictions=int((~finite).sum()),
    )


def _index_shards(
    folder: Path, input_shape: tuple[int, int, int], line: str
) -> tuple[list[_ShardIndex], int]:
    """Every usable shard's times and labels (frames are dropped), in name order; and how
    many shards were skipped as unusable."""
    fix = f"run charles collect first, or give --data FOLDER, a folder of shards for {line}"
    if not folder.is_dir():
        raise CharlesError(f"no samples in {folder}: there is no such folder; {fix}")
    watcher = ShardWatcher(folder, input_shape)
    shards: list[_ShardIndex] = []
    # A few at a time, so only a few shards' frames are in memory at once.
    while batch := watcher.poll(limit=4):
        shards += [_ShardIndex(s.path, s.time, s.throttle, s.steering) for s in batch]
    if not shards:
        unusable = ""
        if watcher.skipped:
            unusable = f" ({watcher.skipped} unusable shards, see the warnings)"
        raise CharlesError(f"no samples in {folder}{unusable}; {fix}")
    return shards, watcher.skipped


def _sample_range(
    start: int | None, end: int | None, limit: int | None, total: int, folder: Path
) -> tuple[int, int]:
    """[first, stop) of the time-ordered samples; CharlesError when outside the folder's."""
    first = 0 if start is None else start
    stop = total if end is None else end
    if first >= total:
        raise CharlesError(
            f"--start {first} is past the last sample: {folder} holds {total} samples "
            f"(0 to {total - 1})"
        )
    if stop > total:
        raise CharlesError(
            f"--end {stop} is past the end: {folder} holds {total} samples; give --end {total} "
            "or less, or leave it out"
        )
    if stop <= first:
        raise CharlesError(f"--end {stop} must be after --start {first}")
    if limit is not None:
        stop = min(stop, first + limit)
    return first, stop


def _time_order(
    shards: list[_ShardIndex], times: np.ndarray, first: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Samples [first, stop) in time order, as (shard number, row in that shard) arrays.

    `times` is every shard's times, one after the other. The sort is stable: samples of equal
    time keep shard (name) order, then their order in the shard."""
    chosen = np.argsort(times, kind="stable")[first:stop]
    starts = np.cumsum([0] + [len(shard.time) for shard in shards])
    shard_of = np.searchsorted(starts, chosen, side="right") - 1
    return shard_of, chosen - starts[shard_of]


def _create(out: Path) -> VideoOutput:
    """`out` created new, or the next free name beside it (`movie-2.mp4`, ...) when something
    has that name: nothing is written over a file or through a link."""
    try:
        output = create_free(free_names(out))
    except OSError as error:
        parent = out.parent
        why = f"{parent} is a file" if parent.exists() and not parent.is_dir() else error.strerror
        raise CharlesError(
            f"cannot write --out {out} ({why or error}); give a path in a folder this user can "
            "write"
        ) from None
    if output.path != out:
        log.info("%s exists; writing into %s", out, output.path)
    return output


def _frames(
    shards: list[_ShardIndex],
    shard_of: np.ndarray,
    row_of: np.ndarray,
    input_shape: tuple[int, int, int],
) -> Iterator[np.ndarray]:
    """The frames of the chosen samples, in order; a shard is read when its first chosen
    sample is due and dropped after its last one, so memory holds only the shards whose
    times overlap (about one per collector that filled the folder)."""
    last_use = {int(s): position for position, s in enumerate(shard_of)}
    loaded: dict[int, np.ndarray] = {}
    for position, (s, row) in enumerate(zip(shard_of.tolist(), row_of.tolist(), strict=True)):
        if s not in loaded:
            shard = read_shard(shards[s].path, input_shape)
            # The folder is shared: a shard replaced since it was indexed must not be mixed in.
            if not np.array_equal(shard.time, shards[s].time):
                raise CharlesError(
                    f"shard {shards[s].path} changed while the movie was made; leave the data "
                    "folder's shards in place and run charles makemovie again"
                )
            loaded[s] = shard.frames
        yield loaded[s][row]
        if last_use[s] == position:
            del loaded[s]
