"""Process replay: a recorded drive's frames through the real loop, model and control mapping,
compared with the commands they gave when the golden file was written.

A change to the loop, the mapping (dead zones, smoothing, the throttle split) or the model's
maths changes a command and turns this red. When such a change is meant, write the golden file
again and commit it with the change:
    CHARLES_WRITE_GOLDEN=1 scripts/test tests/test_replay.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.checkpoints.reference import reference_checkpoint
from agent.config import ControllerConfig
from agent.drive.control import ControlMapper
from agent.drive.replay import replay
from agent.inference.predictor import Predictor
from agent.learn.shard_format import read_shard
from agent.nets.registry import get_line

DATA = Path(__file__).parent / "replay"
SHARD = DATA / "autopilot-seed0.npz"
"""40 frames `charles collect --render offscreen` took on track seed 0, in time order."""
GOLDEN = DATA / "autopilot-seed0.commands.json"
LINE = "pilotnet_small"
TOLERANCE = 2e-3
"""Float noise between CPUs and TensorFlow builds is far below this; any real change is above."""


def test_replayed_frames_give_the_golden_commands() -> None:
    frames = read_shard(SHARD, get_line(LINE).input_shape).frames
    predictor = Predictor.load(LINE, reference_checkpoint(LINE), warmup_runs=1)
    # Every stage of the mapping at work: a GTA V user's XInput dead zone, smoothing on.
    mapper = ControlMapper.from_config(
        ControllerConfig(deadzone_steering=0.24, deadzone_throttle=0.1, smoothing=0.3)
    )
    steps = replay(list(frames), predictor, mapper)
    got = [
        {
            "throttle": round(step.throttle, 4),
            "steering": round(step.steering, 4),
            "command": [
                round(step.command.steering, 4),
                round(step.command.accelerate, 4),
                round(step.command.brake, 4),
            ],
        }
        for step in steps
    ]
    if os.environ.get("CHARLES_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert len(got) == len(golden) == len(frames)
    for index, (step, expected) in enumerate(zip(got, golden, strict=True)):
        assert step["throttle"] == pytest.approx(expected["throttle"], abs=TOLERANCE), index
        assert step["steering"] == pytest.approx(expected["steering"], abs=TOLERANCE), index
        assert step["command"] == pytest.approx(expected["command"], abs=TOLERANCE), index
    # A replay that drove nothing would match a golden file of zeros: this one steers.
    assert max(abs(step["command"][0]) for step in got) > 0.05
