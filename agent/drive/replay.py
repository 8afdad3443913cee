"""Replay: recorded frames through the real drive loop, one at a time (openpilot's process replay).

Each frame is put into the loop's frame slot and the next one only after the loop has sent the
command computed from it, so what comes out depends on the frames, the model and the control
mapping alone, never on this machine's speed. A test compares the commands with a golden file:
a change to the loop, the mapping or the model's maths shows as a changed command.

The frames are what the model takes (a shard's frames: already cropped, resized and RGB); give
`to_model_input` to replay full captured pictures through the preprocessing too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agent.controllers.null import NullController
from agent.drive.control import ControlMapper
from agent.drive.loop import DriveLoop
from agent.inference.predictor import Predictor
from agent.runtime.slot import Slot
from agent.types import ControllerState, Frame, Region, Tick


class ReplayError(RuntimeError):
    """The loop did not act on a replayed frame in time, or stopped on an error."""


@dataclass(frozen=True)
class ReplayStep:
    """What the loop made of one replayed frame."""

    throttle: float
    """The model's raw outputs."""
    steering: float
    command: ControllerState
    """What the controller was sent."""


def replay(
    images: Sequence[np.ndarray],
    predictor: Predictor,
    mapper: ControlMapper,
    to_model_input: Callable[[np.ndarray], np.ndarray] = np.asarray,
    timeout: float = 30.0,
) -> list[ReplayStep]:
    """Drive the real loop (null controller) with `images`, one step per image, in order."""
    frames: Slot[Frame] = Slot()
    ticks: Slot[Tick] = Slot()
    loop = DriveLoop(
        frames=frames, window_ready=lambda: True, to_model_input=to_model_input,
        predictor=predictor, mapper=mapper, controller=NullController(), hz=30.0, ticks=ticks,
    )  # fmt: skip
    thread = threading.Thread(target=loop.run, name="replay-loop", daemon=True)
    thread.start()
    steps: list[ReplayStep] = []
    try:
        for seq, image in enumerate(images, start=1):
            height, width = image.shape[:2]
            frames.put(Frame(image, time.monotonic(), seq, Region(0, 0, width, height)))
            tick = _wait_for_tick_of(seq, ticks, loop, thread, timeout)
            assert tick.prediction is not None  # a driving tick carries its prediction
            steps.append(ReplayStep(tick.prediction.throttle, tick.prediction.steering,
                                    tick.command))  # fmt: skip
    finally:
        loop.stop()
        thread.join(timeout=5.0)
    return steps


def _wait_for_tick_of(
    seq: int, ticks: Slot[Tick], loop: DriveLoop, thread: threading.Thread, timeout: float
) -> Tick:
    """The tick that sent the command for frame `seq`."""
    deadline = time.monotonic() + timeout
    last = 0
    while True:
        tick, last = ticks.wait_newer(last, timeout=0.1)
        if tick is not None and tick.frame is not None and tick.frame.seq == seq:
            return tick
        if not thread.is_alive():  # ended: its error may be read now
            raise ReplayError(f"the drive loop stopped at frame {seq}: {loop.error!r}")
        if time.monotonic() >= deadline:
            raise ReplayError(f"the drive loop sent nothing for frame {seq} in {timeout:.0f} s")
