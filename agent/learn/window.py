"""Collect from a real game window, captured exactly as `charles drive` captures it.

Labels:
- the bundled game: each captured frame is paired with the game's frame record of the picture
  on screen when it was grabbed (the newest record shown before the grab;
  `agent.game.pairing`), so the label is the command in effect when the game *rendered* the
  frame: the autopilot's suggestion (autopilot, dagger) or the input applied (human, from the
  game window's own keys). `charles bench pairing` measures how often that is the right frame.
- any other game (human): the driving keys of [controller.keyboard] held at the grab, read by a
  pynput listener, so a person drives with the keys the keyboard backend would press.

dagger: the agent drives through the controller backend in stretches, and stays silent for the
autopilot's share (a silent virtual pad hands the car back to the game's autopilot).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from functools import partial

import numpy as np

from agent.capture import Grabber
from agent.config import Config
from agent.controllers import open_controller
from agent.drive.control import ControlMapper
from agent.drive.target import acquire_window, is_bundled_game
from agent.errors import CharlesError
from agent.game.launcher import connect_or_launch
from agent.game.pairing import FrameRecordListener
from agent.inference.preprocess import preprocess
from agent.learn.keylabels import KeyLabels
from agent.learn.offscreen import DAGGER_STRETCH_SECONDS, STEERING_ONLY
from agent.learn.sink import CollectSummary, SampleSink
from agent.nets.registry import OUTPUT_NAMES, get_line
from agent.runtime.display import display_for_this_process
from agent.runtime.signals import Stop
from agent.runtime.slot import Slot
from agent.types import NEUTRAL, ControllerState, Frame

log = logging.getLogger("agent.learn.collect")

WAIT_SECONDS = 0.5
NO_AUTOPILOT_FRAMES = 90
"""Grabs in a row without an autopilot suggestion (3 s) before collecting gives up."""


def collect_from_window(
    config: Config, stop: Stop, seconds: float | None, frames_limit: int | None
) -> CollectSummary:
    source = config.collect.source
    bundled = is_bundled_game(config)
    line = get_line(config.model.line)
    to_input = partial(
        preprocess,
        capture_size=config.capture.size,
        crop=config.capture.crop,
        input_size=line.input_size,
    )
    rng = np.random.default_rng(config.collect.seed)
    with contextlib.ExitStack() as stack:
        with stop.interrupting():
            stack.enter_context(display_for_this_process())
            game = None
            records = None
            keys = None
            if bundled:
                extra = ["--seed", str(config.collect.seed)]
                if source != "human":
                    extra.append("--autopilot")
                game = connect_or_launch(
                    config.game.channel_port, config.capture.size, config.game.launch, stack, extra
                )
                records = stack.enter_context(FrameRecordListener(config.game.channel_port))
            window = acquire_window(config, game, stop)
            if not bundled:
                keys = stack.enter_context(KeyLabels(config.controller.keyboard, window.has_focus))
            agent = controller = None
            mapper = ControlMapper.from_config(config.controller)
            if source == "dagger":
                from agent.learn.offscreen import load_agent

                agent = load_agent(config)
                controller = open_controller(config.controller, config.game.channel_port, window)
                stack.callback(controller.close)
            frames: Slot[Frame] = Slot()
            grabber = Grabber(window, config.capture.fps, frames)
            grabber.start()
            stack.callback(grabber.stop)
            sink = SampleSink(config, source, line.input_shape)
            stop.raise_if_requested()

        log.info("collecting from %r (%s)", window.title, source)
        started = time.monotonic()
        seq = 0
        unpaired = without_suggestion = 0
        agent_drives = False
        next_draw = started
        try:
            while not stop.requested:
                now = time.monotonic()
                if seconds is not None and now - started >= seconds:
                    stop("time limit")
                    break
                if frames_limit is not None and sink.frames >= frames_limit:
                    stop("frame limit")
                    break
                if grabber.error is not None:
                    raise grabber.error
                if game is not None and game.exited():
                    raise CharlesError(f"the game closed ({game.last_words()})")
                frame, new_seq = frames.wait_newer(seq, WAIT_SECONDS)
                if frame is None or new_seq == seq:
                    continue
                seq = new_seq
                label, speed, trusted = _label(source, frame, records, keys)
                if label is None:
                    unpaired += 1
                    without_suggestion = without_suggestion + 1 if trusted == () else 0
                    if without_suggestion >= NO_AUTOPILOT_FRAMES:
                        raise CharlesError(
                            "the bundled game sends no autopilot suggestions (its autopilot is "
                            "off, or a person holds its keys), so it cannot label frames; close "
                            "it and let charles collect start the game, or use --source human"
                        )
                    continue
                without_suggestion = 0
                model_input = to_input(frame.image)
                sink.offer(
                    model_input, label.accelerate - label.brake, label.steering, speed, trusted
                )
                if agent is not None and controller is not None:
                    if now >= next_draw:
                        next_draw = now + DAGGER_STRETCH_SECONDS
                        agent_drives = rng.random() >= config.collect.autopilot_share
                        mapper.reset()
                    if agent_drives:
                        prediction = agent.predict(model_input)
                        controller.set(mapper.map(prediction.throttle, prediction.steering))
                    else:
                        controller.set(NEUTRAL)  # a silent pad: the autopilot drives
        except BaseException:
            if controller is not None:
                controller.neutral()
            sink.close_after_error()  # the error that ended it is the one to report
            raise
        if controller is not None:
            controller.neutral()
        histogram = sink.close()
    pairing = records.describe(unpaired) if records is not None else keys_note(keys)
    return CollectSummary(
        source=source,
        render="window",
        frames=sink.frames,
        kept=sink.kept,
        shards=sink.writer.shards_written,
        seconds=time.monotonic() - started,
        tracks=[config.collect.seed] if bundled else [],
        stopped_by=stop.reason or "end",
        histogram=histogram,
        pairing=pairing,
    )


def _label(
    source: str, frame: Frame, records: FrameRecordListener | None, keys: KeyLabels | None
) -> tuple[ControllerState | None, float, tuple[str, ...]]:
    """(label, speed, outputs the label is good for) of one grab; label None: unpaired
    (outputs () then means "paired, but there is nothing to learn": the game made no autopilot
    suggestion, or it was paused)."""
    if records is not None:
        record = records.record_for(frame.captured_at)
        if record is None:
            return None, math.nan, OUTPUT_NAMES
        if record.paused:
            return None, math.nan, ()  # a still of a paused game: nobody drove it
        if source == "human":
            return record.applied, record.speed, OUTPUT_NAMES
        if record.autopilot is None:
            return None, math.nan, ()
        # Who drove when the picture was rendered: while the agent did, the autopilot's pedal
        # suggestion answers a speed the frame does not show (see STEERING_ONLY).
        trusted = OUTPUT_NAMES if record.applied == record.autopilot else STEERING_ONLY
        return record.autopilot, record.speed, trusted
    assert keys is not None
    return keys.state(), math.nan, OUTPUT_NAMES


def keys_note(keys: KeyLabels | None) -> str:
    if keys is None:
        return ""
    return "keys held at the moment of the grab (the game's own display lag is not known)"
