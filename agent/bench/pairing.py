"""`charles bench pairing`: how often a captured frame is paired with the record of the
picture it really shows.

Starts the bundled game with `--stamp` (each picture carries its frame number in its top-left
corner) and its autopilot, captures the window as `charles collect` does, pairs every grab with
a frame record by display time (`FrameRecordListener.record_for`), reads the stamp from the
grabbed pixels and counts: exact, off by one frame, further off, unpaired.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from dataclasses import asdict, dataclass

from agent.arguments import positive_float
from agent.capture import Grabber
from agent.config import Config
from agent.drive.target import acquire_window
from agent.game.launcher import connect_or_launch
from agent.game.pairing import FrameRecordListener
from agent.game.stamp import BITS, read_stamp
from agent.runtime.display import display_for_this_process
from agent.runtime.signals import Stop
from agent.runtime.slot import Slot
from agent.types import Frame

_MASK = (1 << BITS) - 1


@dataclass
class PairingResult:
    grabs: int = 0
    exact: int = 0
    off_by_one: int = 0
    further: int = 0
    unpaired: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        share = 100 / max(self.grabs, 1)
        return (
            f"{self.grabs} grabs in {self.seconds:.1f} s: {self.exact} exact "
            f"({self.exact * share:.1f}%), {self.off_by_one} off by one frame "
            f"({self.off_by_one * share:.1f}%), {self.further} further off, "
            f"{self.unpaired} unpaired"
        )


def measure_pairing(seconds: float, port: int, config: Config | None = None) -> PairingResult:
    """Grab the stamped, autopiloted bundled game for `seconds`, its gamepad on `port`, with
    `config`'s capture settings (default: the built-in ones), and count the pairings."""
    config = config or Config()
    config = dataclasses.replace(config, game=dataclasses.replace(config.game, channel_port=port))
    result = PairingResult()
    with contextlib.ExitStack() as stack:
        stack.enter_context(display_for_this_process())
        game = connect_or_launch(port, config.capture.size, True, stack, ["--stamp", "--autopilot"])
        window = acquire_window(config, game, Stop())
        listener = stack.enter_context(FrameRecordListener(port))
        frames: Slot[Frame] = Slot()
        grabber = Grabber(window, config.capture.fps, frames)
        grabber.start()
        stack.callback(grabber.stop)
        time.sleep(1.0)  # the subscription and the first pictures
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < seconds:
            frame, new_seq = frames.wait_newer(seq, 0.5)
            if frame is None or new_seq == seq:
                continue
            seq = new_seq
            result.grabs += 1
            record = listener.record_for(frame.captured_at)
            if record is None:
                result.unpaired += 1
                continue
            shown = read_stamp(frame.image)
            difference = (shown - record.frame) & _MASK
            difference = min(difference, _MASK + 1 - difference)
            if difference == 0:
                result.exact += 1
            elif difference == 1:
                result.off_by_one += 1
            else:
                result.further += 1
        result.seconds = time.monotonic() - started
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The pairing benchmark's own flags (--config, --set and --json come from the CLI)."""
    parser.add_argument(
        "--seconds", type=positive_float, default=20.0, help="grabbing time (default 20)"
    )
    parser.add_argument(
        "--port", type=int, default=47811,
        help="the game's gamepad port (default 47811, beside a game on the usual 47800)",
    )  # fmt: skip


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench pairing` handler: one line, or one JSON document."""
    result = measure_pairing(args.seconds, args.port, config)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"frame/command pairing: {result.describe()}")
    return 0
