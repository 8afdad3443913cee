"""What each `charles` command runs: the handlers agent/cli/parser.py names.

A handler takes the parsed flags and the loaded config (`charles config init`: the flags
only), wires the objects its command needs, prints what the user asked for and returns the
exit status. The work itself lives in the modules the handlers import, late, so that
`charles --help` and a config mistake never wait for TensorFlow.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, Config, default_config_text
from agent.errors import CharlesError
from agent.nets.registry import LINE_NAMES, get_line
from agent.runtime.signals import EXIT_STATUS

log = logging.getLogger(__name__)


def drive(args: argparse.Namespace, config: Config) -> int:
    """`charles drive`: one drive session, then its summary (text, or JSON with --json)."""
    from agent.session import run_drive

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


def collect_or_train(args: argparse.Namespace, config: Config) -> int:
    """`charles collect` and `charles train`: run until a stop signal, --seconds or the count
    (--frames samples collected, --batches trained), then print the summary; the exit status
    says how it ended."""
    if args.command == "collect" and args.workers is not None:
        from agent.learn.collect import run_collect_fleet

        workers = args.workers or os.cpu_count() or 1
        summary = run_collect_fleet(config, workers, partial(collect_worker, args, config, workers))
    elif args.command == "collect":
        from agent.learn.collect import run_collect

        summary = run_collect(config, args.seconds, args.frames)
        from agent.learn.fleet import worker_report
        from agent.learn.sink import WORKER_ENV

        if os.environ.get(WORKER_ENV) is not None:  # a fleet's worker: the fleet reads this
            print(worker_report(summary), flush=True)
            return EXIT_STATUS.get(summary.stopped_by, 0)
    else:
        from agent.learn.trainer import run_train

        summary = run_train(config, args.seconds, args.batches)
    print("\n".join(summary.lines()))
    return EXIT_STATUS.get(summary.stopped_by, 0)


def collect_worker(
    args: argparse.Namespace, config: Config, workers: int, number: int, start: int
) -> list[str]:
    """The command of worker `number` of `charles collect --workers`, its `start`-th start:
    this command's config file and settings, with its own track seeds and gamepad port, and
    its share of --frames."""
    from agent.cli.parser import config_overrides
    from agent.learn.fleet import SEED_STRIDE

    overrides, _ = config_overrides(args)
    overrides["collect.seed"] = str(
        config.collect.seed + number * SEED_STRIDE + start * SEED_STRIDE // 10
    )
    overrides["game.channel_port"] = str(config.game.channel_port + number)
    command = [sys.executable, "-m", "agent", "collect"]
    if args.config is not None:
        command += ["--config", str(args.config)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    if args.seconds is not None:
        command += ["--seconds", str(args.seconds)]
    if args.frames is not None:
        command += ["--frames", str(-(-args.frames // workers))]
    return command


def game(args: argparse.Namespace, config: Config) -> int:
    """`charles game`: the bundled game, its size and gamepad port from the config unless
    given."""
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


def convcam(args: argparse.Namespace, config: Config) -> int:
    """`charles convcam IMAGE`: the Convcam of the checkpoint on a picture, as a PNG."""
    import cv2

    from agent.checkpoints.reference import checkpoint_to_drive
    from agent.inference.convcam import grid, read_picture, tile
    from agent.inference.predictor import Predictor
    from agent.inference.preprocess import preprocess

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


def config_check(args: argparse.Namespace, config: Config) -> int:
    """`charles config check`: the config loaded (every check passed), every key printed."""
    from agent.stream.target import redact_url

    print(f"{config.source}: OK")
    for section, values in asdict(config).items():
        if isinstance(values, dict):
            for key, value in values.items():
                # Secrets are never printed: a config check is pasted into bug reports.
                if (section, key) == ("stream", "url"):
                    value = redact_url(value) if value else value
                elif (section, key) == ("live", "token") and value:
                    value = "****"
                print(f"  {section}.{key} = {value!r}")
    return 0


def config_init(args: argparse.Namespace) -> int:
    """`charles config init [PATH]`: the commented default config written to a new file."""
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


def model_list(args: argparse.Namespace, config: Config) -> int:
    """`charles model list`: every registered line and what "latest" drives for it."""
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


def model_summary(args: argparse.Namespace, config: Config) -> int:
    """`charles model summary`: a line's shape and parameter counts (of a checkpoint with
    --checkpoint)."""
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
