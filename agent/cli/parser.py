"""The `charles` commands and their flags, and which config keys the flags set.

Every subcommand takes `--config PATH` (default ./config.toml, else the built-in defaults) and
`--set KEY=VALUE` to override one key; dedicated flags such as `--model` are shorthands for
single keys (`KEY_FLAGS`). `charles config init` alone reads no config: it writes one. Each
command's handler is a function of agent/cli/commands.py (or a benchmark's or makemovie's
`run`) that takes the parsed flags and the loaded config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from agent.arguments import int_from_to, positive_float, positive_int
from agent.cli import commands
from agent.config import DEFAULT_CONFIG_PATH, Config, parse_override
from agent.nets.registry import LINE_NAMES

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


class CharlesParser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes end like every other user mistake of Charles: the
    usage, then one `charles: error: ...` line (argparse would start a subcommand's with its
    name, `charles drive: error:`), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"charles: error: {message}\n")


def config_overrides(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
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
    live = getattr(args, "live", None)
    if live is not None:  # --live serves; --live HOST:PORT serves there
        overrides["live.enabled"], origins["live.enabled"] = "true", "--live"
        if live:
            overrides["live.address"], origins["live.address"] = json.dumps(live), "--live"
    stream = getattr(args, "stream", None)
    if stream is not None:
        overrides["stream.url"], origins["stream.url"] = json.dumps(stream), "--stream"
    return overrides, origins


def build_parser() -> argparse.ArgumentParser:
    """The whole `charles` command line: every command with its flags and handler."""
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

    parser = CharlesParser(
        prog="charles", description="Charles: a live self-driving inference agent for games."
    )
    # handler_without_config: set only by commands that read no config (config init).
    # large_blocks_in_heap: set only by collect, whose unpaced loop frees and allocates the
    # same few picture-sized blocks every frame. Given a mapping of their own
    # (agent/runtime/memory.py), each is mapped, faulted in page by page and unmapped again:
    # measured 77 instead of 140 frames/s offscreen, while its resident memory stays flat
    # with glibc's own threshold (108.7 -> 111.6 MB in 300 s, 42k frames).
    parser.set_defaults(handler_without_config=None, large_blocks_in_heap=False)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    drive = subcommands.add_parser(
        "drive", parents=[common, model_flags],
        help="drive the game window with the model (starts the bundled game if needed)",
        description="Find the game window, capture it, predict and drive; ends with a summary.",
    )  # fmt: skip
    drive.set_defaults(handler=commands.drive)
    drive.add_argument("--seconds", type=positive_float, help="stop after this many seconds")
    drive.add_argument(
        "--backend", help="controller backend: game, keyboard, vjoy, vgamepad or null"
    )
    drive.add_argument("--json", action="store_true", help="print the summary as JSON")
    drive.add_argument(
        "--record", nargs="?", const="", metavar="PATH",
        help="record video from the start: into PATH (an .mp4 file or a folder), or into "
        "record.folder without PATH; the record hotkey starts and stops it at any time",
    )  # fmt: skip
    drive.add_argument(
        "--live", nargs="?", const="", metavar="HOST:PORT",
        help="serve the live view for OBS while driving (overlay page, MJPEG pictures, status) "
        "on live.address, or on HOST:PORT; beyond loopback it needs live.token",
    )  # fmt: skip
    drive.add_argument(
        "--stream", metavar="URL",
        help="stream the layout to an ingest (rtmp:// or rtmps://) while driving; the stream "
        "key may come from the environment variable CHARLES_STREAM_KEY instead of the URL",
    )  # fmt: skip

    collect = subcommands.add_parser(
        "collect", parents=[common, model_flags],
        help="record labelled driving samples into the data folder (balanced shards)",
        description="Collect samples for training: frames through the same capture and "
        "preprocess as charles drive, labelled by the autopilot (autopilot, dagger) or a "
        "person (human), balanced per output and written as shards into data.folder.",
    )  # fmt: skip
    collect.set_defaults(handler=commands.collect_or_train, large_blocks_in_heap=True)
    collect.add_argument("--source", help="autopilot, dagger or human (collect.source)")
    collect.add_argument(
        "--render", help="window (capture the game window) or offscreen (collect.render)"
    )
    collect.add_argument("--data", metavar="FOLDER", help="data folder (data.folder)")
    collect.add_argument("--seconds", type=positive_float, help="stop after this many seconds")
    collect.add_argument("--frames", type=positive_int, help="stop after this many frames")
    collect.add_argument(
        "--workers", type=int_from_to(0, 256), metavar="N",
        help="N collectors in processes of their own, each with its own tracks (0: one per "
        "core); --frames is shared between them",
    )  # fmt: skip

    train = subcommands.add_parser(
        "train", parents=[common, model_flags],
        help="train the model line from the data folder and publish checkpoints",
        description="The background trainer: loads new shards into one buffer per output, "
        "trains, and publishes checkpoints into the model store; run it beside charles drive.",
    )  # fmt: skip
    train.set_defaults(handler=commands.collect_or_train)
    train.add_argument("--data", metavar="FOLDER", help="data folder (data.folder)")
    train.add_argument("--seconds", type=positive_float, help="stop after this many seconds")
    train.add_argument("--batches", type=positive_int, help="stop after this many batches")

    game = subcommands.add_parser(
        "game", parents=[common],
        help="open the bundled game (CarRacing) to play or for a separate agent",
        description="The bundled game in a window titled 'Charles CarRacing': arrows/WASD drive "
        "(the brake backs up from a standstill), P pauses, Esc quits.",
    )  # fmt: skip
    from agent.game.options import add_game_arguments

    add_game_arguments(game)
    # Unset flags fall back to config.toml (capture.size, game.channel_port).
    game.set_defaults(handler=commands.game, size=None, port=None)

    convcam = subcommands.add_parser(
        "convcam", parents=[common, model_flags],
        help="save the Convcam (last conv layer's kernels as tiles) of a checkpoint on an image",
        description="Run the model on IMAGE (a screenshot of the game, preprocessed as when "
        "driving) and save the Convcam, the last conv layer's output with every kernel as one "
        "tile, as a PNG.",
    )  # fmt: skip
    convcam.set_defaults(handler=commands.convcam)
    convcam.add_argument("image", type=Path, help="a picture of the game (PNG, JPEG, ...)")
    convcam.add_argument("--out", type=Path, default=Path("convcam.png"), help="PNG to write")
    convcam.add_argument(
        "--scale", type=int_from_to(1, 32), default=4, help="screen pixels per map pixel"
    )

    from agent.learn import makemovie

    movie = subcommands.add_parser(
        "makemovie", parents=[common, model_flags],
        help="render a video of collected samples with recorded and predicted controls",
        description="Every sample of the data folder (or a range), in time order, as the model "
        "saw it, with bars for the recorded label and for what the checkpoint predicts on it.",
    )  # fmt: skip
    movie.set_defaults(handler=makemovie.run)
    movie.add_argument("--data", metavar="FOLDER", help="data folder (data.folder)")
    makemovie.add_arguments(movie)

    config_cmd = subcommands.add_parser("config", help="check, show or write the configuration")
    config_sub = config_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add(config_sub, "check", commands.config_check, [common], "validate the config and print it")
    init_help = "write the commented default config to PATH (never over anything there)"
    init = config_sub.add_parser("init", help=init_help, description=init_help)
    init.set_defaults(handler_without_config=commands.config_init)
    init.add_argument(
        "path", nargs="?", type=Path, default=DEFAULT_CONFIG_PATH, metavar="PATH",
        help=f"where to write it (default: ./{DEFAULT_CONFIG_PATH}, the file Charles reads)",
    )  # fmt: skip

    model_cmd = subcommands.add_parser("model", help="list and inspect model lines")
    model_sub = model_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add(model_sub, "list", commands.model_list, [common],
         "registered model lines and stored versions")  # fmt: skip
    summary = _add(model_sub, "summary", commands.model_summary, [common, model_flags],
                   "build a model line and print its shape and parameter counts")  # fmt: skip
    summary.add_argument("--layers", action="store_true", help="also print Keras's layer table")
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")

    from agent.bench import drive as drive_bench
    from agent.bench import intake, learn, live, model, pairing, record, soak, swap

    bench_cmd = subcommands.add_parser(
        "bench", help="benchmarks: the model alone, the drive loop, swaps, recording, "
        "learning, frame pairing, shard intake, the live view, a long soak",
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
        "intake": (intake, "what a trainer's poll for new shards costs with a backlog of "
                   "thousands in the data folder"),
        "live": (live, "drive with and without two live-view viewers: what do they cost the "
                 "car, and how late do the layout's pictures arrive?"),
        "soak": (soak, "drive for a long time with everything a 24/7 stream uses (trainer, "
                 "recording with rotation, live view, RTMP, a killed game): does anything grow?"),
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
