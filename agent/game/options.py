"""What a game session is asked to do, and the command-line flags that say it."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from agent.arguments import positive_float
from agent.errors import CharlesError
from agent.game.channel import DEFAULT_PORT

WINDOW_TITLE = "Charles CarRacing"
"""The bundled game's window title; here, not in host.py, so that finding a window never
imports pygame or Gymnasium."""
MAX_SIDE = 7680
"""Largest window side in pixels (the same bound as config.toml's capture.size)."""
MAX_SEED = 2**31 - 1
"""Largest track seed (the same bound as config.toml's collect.seed); Gymnasium takes no
negative one."""


class GameError(CharlesError):
    """The bundled game cannot start: a bad option, no display, a busy gamepad port."""


@dataclass(frozen=True)
class GameOptions:
    """One game session.

    size: window (width, height) in pixels; the picture is 16:9, letterboxed if the window is
    not. seed: seeds the first track; later tracks follow from it. channel_port: UDP port of the
    virtual gamepad (agent.game.channel). telemetry: JSON-lines file to append samples to, ten a
    second; telemetry_max_bytes: start it again past this size, keeping the one before as
    FILE.1 (None: no cap). autopilot: let the built-in driver drive whenever keyboard and
    gamepad are idle.
    seconds: quit after this long, None to run until closed. fps: window redraws per second;
    the physics always runs at CarRacing's 50 Hz. owner_pid: the `charles drive` that started
    this game (0: a person did); the game reports it to agents and dies with it. lifeline: quit
    when standard input reaches end of file, i.e. when the process holding its pipe is gone.
    stamp: draw each frame's number into the picture's top-left corner (agent.game.stamp), to
    measure how captured frames pair with the game's frame records. wait_for_input: hold the
    first episode (no physics, no score lost) until some input drives, so a driver that takes
    seconds to load starts on equal terms (the learning benchmark's evaluations).
    """

    size: tuple[int, int] = (1280, 720)
    seed: int = 0
    channel_port: int = DEFAULT_PORT
    telemetry: Path | None = None
    telemetry_max_bytes: int | None = None
    autopilot: bool = False
    seconds: float | None = None
    fps: float = 30.0
    owner_pid: int = 0
    lifeline: bool = False
    stamp: bool = False
    wait_for_input: bool = False

    def __post_init__(self) -> None:
        width, height = self.size
        if not 0 <= self.seed <= MAX_SEED:
            raise GameError(f"track seed {self.seed} is out of range; use 0 to {MAX_SEED}")
        if not (16 <= width <= MAX_SIDE and 9 <= height <= MAX_SIDE):
            raise GameError(
                f"game window size {width}x{height} is out of range; use e.g. 1280x720 "
                f"(16x9 to {MAX_SIDE}x{MAX_SIDE})"
            )
        # The same range config.toml allows for game.channel_port: no privileged ports, and
        # not 0, which would pick a random port no agent knows.
        if not 1024 <= self.channel_port <= 65535:
            raise GameError(f"gamepad port {self.channel_port} is out of range; use 1024-65535")
        if self.owner_pid < 0:
            raise GameError(f"owner pid {self.owner_pid} is not a process id")
        if not (math.isfinite(self.fps) and 0 < self.fps <= 240):
            raise GameError(f"game fps {self.fps} is out of range; use 1-240")
        if self.seconds is not None and not self.seconds > 0:
            raise GameError(f"game seconds {self.seconds} must be positive (or left out)")


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); an argparse type."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size {text!r} is not WIDTHxHEIGHT, e.g. 1280x720"
        ) from None
    return width, height


def add_game_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `python -m agent.game` (and `charles game`), one per GameOptions field."""
    defaults = GameOptions()
    width, height = defaults.size
    parser.add_argument(
        "--size", type=parse_size, default=defaults.size, metavar="WxH",
        help=f"window size in pixels (default: {width}x{height})",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="track seed (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=defaults.channel_port,
        help="UDP port of the virtual gamepad (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--telemetry", type=Path, default=None, metavar="FILE",
        help="append JSON-lines telemetry to FILE, ten samples a second",
    )  # fmt: skip
    parser.add_argument(
        "--telemetry-max-mb", type=positive_float, default=None, metavar="MB",
        help="past MB megabytes, FILE becomes FILE.1 (replacing it) and starts again; "
        "without it, FILE grows for as long as the game runs (~200 MB a day)",
    )  # fmt: skip
    parser.add_argument(
        "--autopilot", action="store_true",
        help="drive with the built-in autopilot when keyboard and gamepad are idle",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=None, help="quit after this many seconds")
    parser.add_argument(
        "--fps", type=float, default=defaults.fps,
        help="window redraws per second (default: %(default)s; physics is always 50 Hz)",
    )  # fmt: skip
    parser.add_argument(
        "--stamp", action="store_true",
        help="draw the frame number in the top-left corner (for measuring frame pairing)",
    )  # fmt: skip
    parser.add_argument(
        "--wait-for-input", action="store_true",
        help="hold the car on the grid until the first input (keyboard, gamepad or autopilot)",
    )  # fmt: skip
    # Set by `charles drive` when it starts the game; not meant for people.
    parser.add_argument("--owner-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lifeline", action="store_true", help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> GameOptions:
    """GameOptions from flags added by `add_game_arguments`."""
    return GameOptions(
        size=args.size,
        seed=args.seed,
        channel_port=args.port,
        telemetry=args.telemetry,
        telemetry_max_bytes=(
            None if args.telemetry_max_mb is None else max(1, int(args.telemetry_max_mb * 1e6))
        ),
        autopilot=args.autopilot,
        seconds=args.seconds,
        fps=args.fps,
        owner_pid=getattr(args, "owner_pid", 0),
        lifeline=getattr(args, "lifeline", False),
        stamp=getattr(args, "stamp", False),
        wait_for_input=getattr(args, "wait_for_input", False),
    )
