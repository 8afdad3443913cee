"""The `charles` command: the only place that wires objects together.

Every subcommand takes `--config PATH` (default ./config.toml, else the built-in defaults) and
`--set KEY=VALUE` to override one key; dedicated flags such as `--model` are shorthands for
single keys. `charles config init` alone reads no config: it writes one. User mistakes end as
one `charles: error: ...` line and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, Config, load_config, parse_override
from agent.errors import CharlesError, require_positive
from agent.nets.registry import LINE_NAMES, get_line
from agent.runtime.signals import EXIT_STATUS, StopRequested

# Flags that are shorthands for one config key each: flag dest -> dotted key.
KEY_FLAGS = {
    "model": "model.line",
    "pretrained": "model.pretrained",
    "checkpoint": "model.checkpoint",
    "store": "model.store",
    "backend": "controller.backend",
    "source": "collect.source",
    "render": "collect.render",
    "data": "data.folder",
}


log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `charles` console script and `python -m agent`."""
    # TensorFlow's C++ start-up chatter is noise for a user; real errors still surface.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.handler_without_config is not None:
            return int(args.handler_without_config(args) or 0)
        config = load_config(args.config, *_overrides(args))
        return int(args.handler(args, config) or 0)
    except CharlesError as error:
        print(f"charles: error: {error}", file=sys.stderr)
        return error.exit_status
    except StopRequested as stopped:
        print(f"charles: stopped by {stopped.reason} while starting", file=sys.stderr)
        return EXIT_STATUS.get(stopped.reason, 1)
    except KeyboardInterrupt:
        print("charles: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        sys.stderr.close()
        return 0


def _overrides(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """Config keys set on the command line, and the flag that set each (for messages)."""
    overrides: dict[str, str] = {}
    origins: dict[str, str] = {}
    for item in args.set or []:
        key, value = parse_override(item)
        overrides[key], origins[key] = value, f"--set {key}"
    for dest, key in KEY_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            # A JSON string is a valid TOML basic string, so any path or name survives quoting
            # (unescaped non-ASCII: TOML has no surrogate-pair escapes).
            overrides[key], origins[key] = json.dumps(value, ensure_ascii=False), f"--{dest}"
    return overrides, origins


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help=f"config file (default: ./{DEFAULT_CONFIG_PATH}, else the built-in defaults)",
    )
    common.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override one config key, e.g. --set capture.fps=20 (repeatable)",
    )  # fmt: skip
    model_flags = argparse.ArgumentParser(add_help=False)
    model_flags.add_argument("--model", metavar="LINE", help=f"model line: {', '.join(LINE_NAMES)}")
    model_flags.add_argument("--pretrained", help='"none", "imagenet" or a backbone weights file')
    model_flags.add_argument(
        "--checkpoint", help='"latest", "none", a version (v0003) or a checkpoint folder'
    )
    model_flags.add_argument(
        "--store", metavar="DIR", help="model store folder (charles drive follows it for newer "
        'checkpoints with --checkpoint latest)',
    )  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="charles", description="Charles: a live self-driving inference agent for games."
    )
    # Set only by commands that read no config (config init).
    parser.set_defaults(handler_without_config=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    drive = commands.add_parser(
        "drive", parents=[common, model_flags],
        help="drive the game window with the model (starts the bundled game if needed)",
        description="Find the game window, capture it, predict and drive; ends with a summary.",
    )  # fmt: skip
    drive.set_defaults(handler=_drive)
    drive.add_argument("--seconds", type=float, help="stop after this many seconds")
    drive.add_argument(
        "--backend", help="controller backend: game, keyboard, vjoy, vgamepad or null"
    )
    drive.add_argument("--json", action="store_true", help="print the summary as JSON")
    drive.add_argument(
        "--record", nargs="?", const="", metavar="PATH",
        help="record video from the start: into PATH (an .mp4 file or a folder), or into "
        "record.folder without PATH; the record hotkey starts and stops it at any time",
    )  # fmt: skip

    collect = commands.add_parser(
        "collect", parents=[common, model_flags],
        help="record labelled driving samples into the data folder (balanced shards)",
        description="Collect samples for training: frames through the same capture and "
        "preprocess as charles drive, labelled by the autopilot (autopilot, dagger) or a "
        "person (human), balanced per output and written as shards into data.folder.",
    )  # fmt: skip
    collect.set_defaults(handler=_collect)
    collect.add_argument("--source", help="autopilot, dagger or human (collect.source)")
    collect.add_argument(
        "--render", help="window (capture the game window) or offscreen (collect.render)"
    )
    collect.add_argument("--data", metavar="FOLDER", help="data folder (data.folder)")
    collect.add_argument("--seconds", type=float, help="stop after this many seconds")
    collect.add_argument("--frames", type=int, help="stop after this many frames")

    train = commands.add_parser(
        "train", parents=[common, model_flags],
        help="train the model line from the data folder and publish checkpoints",
        description="The background trainer: loads new shards into one buffer per output, "
        "trains, and publishes checkpoints into the model store; run it beside charles drive.",
    )  # fmt: skip
    train.set_defaults(handler=_train)
    train.add_argument("--data", metavar="FOLDER", help="data folder (data.folder)")
    train.add_argument("--seconds", type=float, help="stop after this many seconds")
    train.add_argument("--batches", type=int, help="stop after this many batches")

    game = commands.add_parser(
        "game", parents=[common],
        help="open the bundled game (CarRacing) to play or for a separate agent",
        description="The bundled game in a window titled 'Charles CarRacing': arrows/WASD drive "
        "(the brake backs up from a standstill), P pauses, Esc quits.",
    )  # fmt: skip
    from agent.game.options import add_game_arguments

    add_game_arguments(game)
    # Unset flags fall back to config.toml (capture.size, game.channel_port).
    game.set_defaults(handler=_game, size=None, port=None)

    convcam = commands.add_parser(
        "convcam", parents=[common, model_flags],
        help="save the Convcam (last conv layer's kernels as tiles) of a checkpoint on an image",
        description="Run the model on IMAGE (a screenshot of the game, preprocessed as when "
        "driving) and save the Convcam, the last conv layer's output with every kernel as one "
        "tile, as a PNG.",
    )  # fmt: skip
    convcam.set_defaults(handler=_convcam)
    convcam.add_argument("image", type=Path, help="a picture of the game (PNG, JPEG, ...)")
    convcam.add_argument("--out", type=Path, default=Path("convcam.png"), help="PNG to write")
    convcam.add_argument("--scale", type=int, default=4, help="screen pixels per map pixel")

    from agent.learn import makemovie

    movie = commands.add_parser(
        "makemovie", parents=[common, model_flags],
        help="render a video of collected samples with recorded and predicted controls",
        description="Every sample of the data folder (or a range), in time order, as the model "
        "saw it, with bars for the recorded label and for what the checkpoint predicts on it.",
    )  # fmt: skip
    movie.set_defaults(handler=makemovie.run)
    movie.add_argument("--data", metavar="FOLDER", help="data folder (data.folder)")
    makemovie.add_arguments(movie)

    config_cmd = commands.add_parser("config", help="check, show or write the configuration")
    config_sub = config_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add(config_sub, "check", _config_check, [common], "validate the config and print it")
    init_help = "write the commented default config to PATH (never over anything there)"
    init = config_sub.add_parser("init", help=init_help, description=init_help)
    init.set_defaults(handler_without_config=_config_init)
    init.add_argument(
        "path", nargs="?", type=Path, default=DEFAULT_CONFIG_PATH, metavar="PATH",
        help=f"where to write it (default: ./{DEFAULT_CONFIG_PATH}, the file Charles reads)",
    )  # fmt: skip

    model_cmd = commands.add_parser("model", help="list and inspect model lines")
    model_sub = model_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add(model_sub, "list", _model_list, [common], "registered model lines and stored versions")
    summary = _add(model_sub, "summary", _model_summary, [common, model_flags],
                   "build a model line and print its shape and parameter counts")  # fmt: skip
    summary.add_argument("--layers", action="store_true", help="also print Keras's layer table")
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")

    from agent.bench import drive as drive_bench
    from agent.bench import learn, model, pairing, record, swap

    bench_cmd = commands.add_parser(
        "bench", help="benchmarks: the model alone, the drive loop, swaps, recording, "
        "learning, frame pairing",
    )  # fmt: skip
    bench_sub = bench_cmd.add_subparsers(dest="action", required=True, metavar="BENCHMARK")
    benchmarks = {
        "model": (model, "predictions per second and latency percentiles at batch 1"),
        "drive": (drive_bench, "drive the bundled game and compare the loop with the raw "
                  "model and a naive loop, once or in rounds over settings"),
        "swap": (swap, "drive while new checkpoints land in the store: can a swap be seen?"),
        "record": (record, "drive with recording off, in HUD and in layout mode: what does "
                   "recording cost?"),
        "learn": (learn, "collect, train, then drive unseen tracks: score against training "
                  "time"),
        "pairing": (pairing, "how often a grabbed frame is paired with the record of the "
                    "picture it shows"),
    }  # fmt: skip
    for name, (module, help_text) in benchmarks.items():
        # model and drive run one model here; the others choose their lines themselves.
        parents = [common, model_flags] if name in ("model", "drive") else [common]
        sub = _add(bench_sub, name, module.run, parents, help_text)
        sub.add_argument("--json", action="store_true", help="print one JSON document")
        module.add_arguments(sub)
    return parser


def _add(
    subparsers: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace, Config], int | None],
    parents: list[argparse.ArgumentParser],
    help_text: str,
) -> argparse.ArgumentParser:
    sub = subparsers.add_parser(name, parents=parents, help=help_text, description=help_text)
    sub.set_defaults(handler=handler)
    return sub


def _write_new_file(path: Path, data: bytes, flag: str) -> Path:
    """Write `data` into a new file at `path`, or at the next free name (`out-2.png`, ...):
    never over a file, never through a link. Returns where it went."""
    from agent.files import free_names, write_new_file

    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise CharlesError(f"{flag} {path} is a link or not a plain file; give a new file name")
    try:
        written = write_new_file(free_names(path), data, 0o644)
    except OSError as error:
        raise CharlesError(f"cannot write {path}: {error.strerror or error}") from None
    if written != path:
        log.info("%s exists; writing into %s", path, written)
    return written


def _convcam(args: argparse.Namespace, config: Config) -> int:
    import cv2

    from agent.checkpoints.reference import checkpoint_to_drive
    from agent.inference.convcam import grid, read_picture, tile
    from agent.inference.predictor import Predictor
    from agent.inference.preprocess import preprocess

    if not 1 <= args.scale <= 32:
        raise CharlesError("--scale must be a whole number from 1 to 32")
    picture = read_picture(args.image)
    line = get_line(config.model.line)
    predictor = Predictor.load(
        line.name, checkpoint_to_drive(config), config.model.pretrained, convcam=True
    )
    rgb = cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
    frame = preprocess(rgb, config.capture.size, config.capture.crop, line.input_size, order="rgb")
    prediction = predictor.predict(frame)
    assert prediction.convcam is not None
    ok, encoded = cv2.imencode(".png", tile(prediction.convcam, args.scale))
    if not ok:
        raise CharlesError("OpenCV could not encode the Convcam as PNG")
    out = _write_new_file(args.out, encoded.tobytes(), "--out")
    height, width, channels = prediction.convcam.shape
    rows, columns = grid(channels)
    print(
        f"Convcam of {predictor.name} ({line.convcam_layer}): {channels} maps of "
        f"{height}x{width} in {rows} rows of {columns} -> {out}; "
        f"throttle {prediction.throttle:+.3f} steering {prediction.steering:+.3f}"
    )
    return 0


def _drive(args: argparse.Namespace, config: Config) -> int:
    from agent.drive.session import run_drive

    if args.seconds is not None and not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise CharlesError("--seconds must be a positive number of seconds")
    live = sys.stdout.isatty() and not args.json
    record: Path | bool = False
    if args.record is not None:
        record = Path(args.record) if args.record else True
    summary = run_drive(config, args.seconds, live_console=live, record=record)
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        print("\n".join(summary.lines()))
    # Stopped by a signal: the summary is printed, and the status says how it ended.
    return EXIT_STATUS.get(summary.stopped_by, 0)


def _collect(args: argparse.Namespace, config: Config) -> int:
    from agent.learn.collect import run_collect

    require_positive(args.seconds, "--seconds")
    require_positive(args.frames, "--frames")
    summary = run_collect(config, args.seconds, args.frames)
    print("\n".join(summary.lines()))
    return EXIT_STATUS.get(summary.stopped_by, 0)


def _train(args: argparse.Namespace, config: Config) -> int:
    from agent.learn.trainer import run_train

    require_positive(args.seconds, "--seconds")
    require_positive(args.batches, "--batches")
    summary = run_train(config, args.seconds, args.batches)
    print("\n".join(summary.lines()))
    return EXIT_STATUS.get(summary.stopped_by, 0)


def _game(args: argparse.Namespace, config: Config) -> int:
    from agent.game.__main__ import run_game_or_explain
    from agent.game.options import options_from_args
    from agent.runtime.display import display_for_this_process

    if args.size is None:
        args.size = config.capture.size
    if args.port is None:
        args.port = config.game.channel_port
    options = options_from_args(args)
    with display_for_this_process():
        return run_game_or_explain(options)


def _config_check(args: argparse.Namespace, config: Config) -> int:
    print(f"{config.source}: OK")
    for section, values in asdict(config).items():
        if isinstance(values, dict):
            for key, value in values.items():
                print(f"  {section}.{key} = {value!r}")
    return 0


def _config_init(args: argparse.Namespace) -> int:
    from agent.config import default_config_text
    from agent.files import write_new_file

    path: Path = args.path
    try:
        if not path.parent.is_dir():  # a typo in PATH must not create folders
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path.parent))
        # Only this name: a file, folder or link (even a dangling one) already there is
        # refused, never written into or through.
        write_new_file([path], default_config_text().encode("utf-8"), 0o644)
    except FileExistsError:
        raise CharlesError(
            f"{path} already exists; config init never replaces anything: edit that file, "
            "move it away, or give config init another PATH"
        ) from None
    except OSError as error:
        raise CharlesError(
            f"cannot write {path}: {error.strerror or error}; give config init a PATH in a "
            "folder that exists and that you may write to"
        ) from None
    check = "charles config check"
    if path != DEFAULT_CONFIG_PATH:
        check += f" --config {path}"
    print(f"wrote the default config to {path}; edit it, then check it with: {check}")
    return 0


def _model_list(args: argparse.Namespace, config: Config) -> int:
    for name in LINE_NAMES:
        line = get_line(name)
        height, width, _ = line.input_shape
        print(f"{name}  input {width}x{height}  [{_latest_shown(Path(config.model.store), name)}]")
        print(f"    {line.description}")
    return 0


def _latest_shown(store: Path, line: str) -> str:
    """What "latest" drives for `line`: the store's newest intact version or, while the store
    has none, the reference checkpoint Charles ships."""
    from agent.checkpoints.reference import reference_checkpoint
    from agent.checkpoints.resolve import latest
    from agent.errors import ModelError

    try:
        newest = latest(store, line)
    except ModelError as error:
        return f"no intact checkpoint: {error}"
    if newest is not None:
        return newest.name
    reference = reference_checkpoint(line)
    if reference is not None:
        return f"no checkpoints yet; shipped reference {reference.name}"
    return "no checkpoints yet"


def _model_summary(args: argparse.Namespace, config: Config) -> int:
    import numpy as np

    from agent.nets.runtime import require_tensorflow

    require_tensorflow()
    line = get_line(config.model.line)
    checkpoint = None
    if args.checkpoint is not None:  # only when asked: the config's "latest" would load weights
        from agent.checkpoints.load import load_into
        from agent.checkpoints.resolve import resolve

        checkpoint = resolve(Path(config.model.store), line.name, config.model.checkpoint)
    model = line.build("none" if checkpoint else config.model.pretrained)
    if checkpoint is not None:
        load_into(model, checkpoint, line.name)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    from agent.inference.predictor import convcam_tensor

    convcam_shape = tuple(convcam_tensor(model, line).shape[1:])
    report = {
        "model_line": line.name,
        "input": {"dtype": "uint8", "shape": list(line.input_shape)},
        "outputs": [{"name": name, "range": [-1.0, 1.0]} for name in model.output_names],
        "convcam": {"layer": line.convcam_layer, "shape": list(convcam_shape)},
        "pretrained": config.model.pretrained,
        "checkpoint": checkpoint.name if checkpoint else None,
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if args.layers:
        model.summary(line_length=110)
    height, width, _ = line.input_shape
    print(f"Model line: {line.name}")
    print(f"  {line.description}")
    print(f"Input: uint8 RGB frame {width}x{height}, shape {line.input_shape}")
    print(f"Outputs: {', '.join(model.output_names)} (each in [-1, 1])")
    print(f"Convcam: {line.convcam_layer} -> {convcam_shape}")
    print(f"Pretrained: {config.model.pretrained}")
    if args.checkpoint is not None:
        print(f"Checkpoint: {checkpoint.name if checkpoint else 'none (fresh weights)'}")
    print(f"Total params: {report['total_params']:,}")
    print(f"Trainable params: {trainable:,}")
    print(f"Non-trainable params: {non_trainable:,}")
    return 0
