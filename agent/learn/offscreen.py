"""Collect from the bundled game rendered in this process: no window, no pacing.

The game's physics runs at its fixed 50 Hz of simulated time and a picture is taken on the
same 30-a-second grid the window would show, through `OffscreenCamera`, which yields exactly
the pixels window capture + `preprocess` give (tests/test_camera.py). Nothing waits for a
wall clock, so this collects several times faster than real time on one core; and every
label is exact: the frame and the command come from the same simulation step, so there is
no pairing error at all.

Sources:
- autopilot: the autopilot drives and labels.
- dagger: in stretches of `DAGGER_STRETCH_SECONDS`, the agent (the newest checkpoint) drives
  for a `1 - collect.autopilot_share` share of the time, the autopilot the rest; every frame
  is labelled with what the autopilot would have done. The agent's command takes effect one
  physics step after its frame, like the latency of a real drive. Frames the agent drives
  join the steering set only (see STEERING_ONLY's comment). With `model.checkpoint =
  "latest"` the agent follows the store: at each new track it takes a newer version if one
  was published, so a collector beside a running trainer keeps driving its newest weights.
Both may add steering disturbances (`collect.steering_noise`): the car is pushed off its line
now and then while the labels stay the autopilot's clean commands, so the data shows how to
get back.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.config import Config
from agent.drive.control import ControlMapper
from agent.errors import CharlesError, warn_once
from agent.game.autopilot import Autopilot
from agent.game.camera import OffscreenCamera
from agent.game.sim import PHYSICS_HZ, HostedCarRacing
from agent.learn.sink import CollectSummary, SampleSink
from agent.nets.registry import OUTPUT_NAMES, get_line
from agent.runtime.signals import Stop
from agent.types import ControllerState

if TYPE_CHECKING:
    from agent.inference.predictor import Predictor

log = logging.getLogger("agent.learn.collect")

DAGGER_STRETCH_SECONDS = 3.0
"""Simulated seconds one driver keeps the wheel before the dagger mix is drawn again."""
EPISODE_SECONDS = 90.0
"""Simulated seconds after which a track is given up (a lap takes the autopilot about 35)."""
STEERING_ONLY = ("steering",)
OFF_TRACK_SECONDS = 4.0
"""Simulated seconds off the road after which the autopilot takes the wheel back (dagger)."""


class Disturbance:
    """Random pushes held for a while: steering offsets off the line, and now and then a stab
    on the brake, so the data also holds slow and stopped cars and how to get going again."""

    def __init__(self, size: float, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.offset = 0.0
        self.brake = 0.0
        self.steps_left = 0

    def apply(self, command: ControllerState) -> ControllerState:
        if self.size <= 0.0:
            return command
        if self.steps_left <= 0:
            pushing = self.rng.random() < 0.3
            self.offset = float(self.rng.normal(0.0, self.size)) if pushing else 0.0
            braking = self.rng.random() < 0.1
            self.brake = float(self.rng.uniform(0.5, 1.0)) if braking else 0.0
            self.steps_left = int(self.rng.integers(10, 40)) * (3 if braking else 1)
        self.steps_left -= 1
        steering = float(np.clip(command.steering + self.offset, -1.0, 1.0))
        if self.brake > 0.0:
            return ControllerState(steering, 0.0, self.brake)
        return ControllerState(steering, command.accelerate, command.brake)


def collect_offscreen(
    config: Config, stop: Stop, seconds: float | None, frames_limit: int | None
) -> CollectSummary:
    source = config.collect.source
    line = get_line(config.model.line)
    camera = OffscreenCamera(
        tuple(config.capture.size), tuple(config.capture.crop), line.input_size
    )  # type: ignore[arg-type]
    agent = load_agent(config) if source == "dagger" else None
    mapper = ControlMapper.from_config(config.controller)
    sink = SampleSink(config, source, line.input_shape)
    rng = np.random.default_rng(config.collect.seed)
    disturbance = Disturbance(config.collect.steering_noise, rng)
    env = HostedCarRacing()
    autopilot = Autopilot()
    seed = config.collect.seed
    tracks = [seed]
    env.reset(seed=seed)
    steps_per_frame = PHYSICS_HZ / config.capture.fps
    stretch = round(DAGGER_STRETCH_SECONDS * PHYSICS_HZ)
    step = episode_step = off_track = 0
    next_frame = 0.0
    agent_drives = False
    agent_command: ControllerState | None = None
    started = time.monotonic()
    try:
        while not stop.requested:
            if seconds is not None and time.monotonic() - started >= seconds:
                stop("time limit")
                break
            if frames_limit is not None and sink.frames >= frames_limit:
                stop("frame limit")
                break
            label = autopilot.act(env)
            if agent is not None and episode_step % stretch == 0:
                agent_drives = rng.random() >= config.collect.autopilot_share
                agent_command = None
            if episode_step >= next_frame:
                next_frame += steps_per_frame
                frame = camera.frame(env)
                # The autopilot's pedals answer the car's speed, which one frame does not show:
                # at the agent's (different) speed they would teach braking or flooring it from
                # a picture alone, so agent-driven frames teach steering only.
                trusted = STEERING_ONLY if agent_drives else OUTPUT_NAMES
                sink.offer(
                    frame, label.accelerate - label.brake, label.steering, env.speed, trusted
                )
                if off_track >= OFF_TRACK_SECONDS * PHYSICS_HZ:
                    agent_drives = False  # lost: the autopilot brings the car back
                if agent is not None and agent_drives:
                    prediction = agent.predict(frame)
                    agent_command = mapper.map(prediction.throttle, prediction.steering)
            command = agent_command if agent_drives and agent_command is not None else label
            _reward, over, _info = env.apply(disturbance.apply(command))
            step += 1
            episode_step += 1
            off_track = 0 if env.on_track else off_track + 1
            if over or episode_step >= EPISODE_SECONDS * PHYSICS_HZ:
                seed += 1
                tracks.append(seed)
                if agent is not None:
                    follow_newest(agent, config)
                env.reset(seed=seed)
                autopilot.reset()
                mapper.reset()
                episode_step = off_track = 0
                next_frame = 0.0
    except BaseException:
        env.close()
        sink.close_after_error()  # the error that ended it is the one to report
        raise
    env.close()
    histogram = sink.close()
    return CollectSummary(
        source=source,
        render="offscreen",
        frames=sink.frames,
        kept=sink.kept,
        shards=sink.writer.shards_written,
        seconds=time.monotonic() - started,
        tracks=tracks,
        stopped_by=stop.reason or "end",
        histogram=histogram,
        pairing="exact (frame and command from the same simulation step)",
    )


def load_agent(config: Config) -> Predictor:
    from agent.checkpoints.reference import checkpoint_to_drive
    from agent.inference.predictor import Predictor

    checkpoint = checkpoint_to_drive(config)
    if checkpoint is None:
        log.info("dagger: no checkpoint yet, so the agent drives with fresh weights")
    predictor = Predictor.load(config.model.line, checkpoint, config.model.pretrained)
    log.info("dagger: the agent drives with %s", predictor.name)
    return predictor


def follow_newest(agent: Predictor, config: Config) -> None:
    """Fill `agent` with the newest intact version of the store when it is newer than the one
    it holds (`model.checkpoint = "latest"` only: a named checkpoint stays). A store that
    cannot be read is logged, and the agent drives on with what it has."""
    from agent.checkpoints.load import load_into
    from agent.checkpoints.resolve import latest

    if config.model.checkpoint != "latest":
        return
    try:
        newest = latest(Path(config.model.store), config.model.line, fits=agent.model)
        if newest is None or (agent.checkpoint and agent.checkpoint.folder == newest.folder):
            return
        load_into(agent.model, newest, config.model.line)
    except CharlesError as error:
        warn_once(log, f"dagger: the agent keeps {agent.name}: {error}")
        return
    agent.checkpoint, agent.name = newest, newest.name
    agent.weights_changed()
    log.info("dagger: the agent now drives with %s", agent.name)
