"""`charles drive`: the composition root of a drive session.

It wires capture -> drive loop -> controller, plus hotkeys, the live console and (for the
bundled game) the game process, and guarantees the way out: whatever ends the session (time
limit, quit hotkey, Ctrl-C, SIGTERM, an exception in any thread, a game that keeps dying), the
controller goes neutral and releases every key before anything else is torn down. A stop signal
during start-up (waiting for the window, loading the model) ends it at once, before any input.
A bundled game the session started itself is started again when it dies
(`agent.game.supervisor`); one a person started is waited for.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.capture import Grabber
from agent.capture.window import GameWindow
from agent.checkpoints.manifest import Checkpoint, version_number
from agent.checkpoints.reference import checkpoint_to_drive
from agent.config import Config, InferenceConfig
from agent.controllers import Controller, open_controller
from agent.drive.console import RateMeter, render
from agent.drive.control import ControlMapper
from agent.drive.hotkeys import Hotkeys
from agent.drive.hotswap import HotSwap
from agent.drive.latency import RenderToCommand
from agent.drive.loop import DriveLoop, failure_to_raise
from agent.drive.status import DriveStatus
from agent.drive.summary import (
    DriveSummary,
    LiveRow,
    command_gaps,
    median_ms,
    percentiles_ms,
    rejection_rows,
    swap_rows,
)
from agent.drive.target import acquire_window, is_bundled_game
from agent.drive.unstuck import RecoveryPlan, StuckDetector, Unstuck
from agent.game.channel import request_reset
from agent.game.launcher import BundledGame, connect_or_launch
from agent.game.pairing import FrameRecordListener
from agent.game.supervisor import GameSupervisor
from agent.game.telemetry import TelemetryRecord, read_last_telemetry, record_from
from agent.inference.onnx_backend import check_installed
from agent.inference.predictor import Predictor, build_model
from agent.inference.preprocess import preprocess
from agent.live.address import check_live_settings
from agent.nets.registry import ModelLine, get_line
from agent.nets.runtime import configure_threads
from agent.record.hud import Status
from agent.record.losses import LossCurve
from agent.record.pictures import PictureFeed
from agent.record.recorder import Recorder, RecordingReport, check_before_driving
from agent.record.watched import WatchedPictures
from agent.runtime.display import display_for_this_process
from agent.runtime.liveness import Failures
from agent.runtime.signals import Stop, on_stop_signals
from agent.runtime.slot import Slot
from agent.stream.sender import StreamSender
from agent.stream.target import check_stream_settings
from agent.types import Frame, Tick

if TYPE_CHECKING:
    from agent.live.server import LiveServer

log = logging.getLogger(__name__)

USER_STOPS = ("time limit", "quit hotkey", "SIGINT", "SIGTERM")
"""Stop reasons a person asked for; any other end with a loop error reports that error."""
STARTING = "starting"
"""The model name pictures show before the drive loop's first status."""


def run_drive(
    config: Config,
    seconds: float | None,
    live_console: bool,
    record: Path | bool = False,
    stamped_game: bool = False,
) -> DriveSummary:
    """Drive until a stop reason; returns the summary.

    `record`: True records from the start into record.folder, a path records there; False
    records only when record.enabled is set (the record hotkey works either way).
    `stamped_game`: the bundled game runs with `--stamp` (one this drive starts is started
    with it), so render-to-command latency knows each picture exactly instead of pairing it
    by capture time.

    Raises CharlesError for user problems and StopRequested when a stop signal came during
    start-up (nothing was driven then).
    """
    check_installed(config.inference)
    if config.live.enabled:
        check_live_settings(config.live)  # an address beyond loopback needs a token
    if config.stream.url:
        check_stream_settings(config.stream)
    check_before_driving(
        config.record, record if isinstance(record, Path) else None,
        from_the_start=bool(record) or config.record.enabled,
    )  # fmt: skip
    stop = Stop()
    with contextlib.ExitStack() as stack:
        stack.enter_context(on_stop_signals(stop.on_signal))
        with stop.interrupting():
            session = _start(config, stack, stop, record, stamped_game)
        # Everything built so far (TensorFlow, both networks) lives as long as the session: out
        # of the collector's sight, a full collection no longer walks it. Measured on model_0005
        # while a checkpoint loads beside driving: without this, garbage collections the loader
        # triggers froze the process for up to ~250 ms (gaps between commands of 400 ms).
        gc.collect()
        gc.freeze()
        stack.callback(gc.unfreeze)
        return _drive(session, config, stack, stop, seconds, live_console, record)


@dataclass
class _Session:
    """The parts of one drive session, built and started, before the loop's thread runs."""

    window: GameWindow
    game: BundledGame | None
    started_with: str
    grabber: Grabber
    recorder: Recorder
    controller: Controller
    loop: DriveLoop
    hot_swap: HotSwap | None
    ticks: Slot[Tick]
    render_latency: RenderToCommand | None
    live: LiveServer | None = None
    stream: StreamSender | None = None
    supervisor: GameSupervisor | None = None
    """Restarts the bundled game when it dies; None unless this session started the game."""


def _start(
    config: Config,
    stack: contextlib.ExitStack,
    stop: Stop,
    record: Path | bool,
    stamped_game: bool,
) -> _Session:
    """Build every part and start the helper threads; nothing is sent to the game yet.

    Teardown is registered on `stack` as each part starts; it runs in reverse, so on the way
    out the controller goes neutral before anything it depends on stops.
    """
    stack.enter_context(display_for_this_process())
    line = get_line(config.model.line)
    checkpoint = checkpoint_to_drive(config)
    game = None
    if is_bundled_game(config):
        game = connect_or_launch(
            config.game.channel_port, config.capture.size, config.game.launch, stack,
            ("--stamp",) if stamped_game else (),
        )  # fmt: skip
    window = acquire_window(config, game, stop)
    # Load and warm the model before any input is sent, so the first command is not late.
    log.info("loading %s", checkpoint.name if checkpoint else f"a fresh {line.name}")
    # With the Convcam output the driving prediction carries its own feature map, so a
    # recording (from the start, or from the hotkey) never runs the model twice.
    convcam = config.record.convcam
    configure_threads(config.inference)
    predictor = Predictor.load(
        line.name, checkpoint, config.model.pretrained, convcam=convcam,
        inference=config.inference,
    )  # fmt: skip
    # Every helper thread reports why it stopped here; the loop stops on the first report.
    failures = Failures()
    hot_swap = _hot_swap_for(config, line, checkpoint, predictor, convcam, failures)
    unstuck, game_paused = _unstuck_for(config, game is not None, stack)
    render_latency = None
    if game is not None:
        render_latency = stack.enter_context(
            RenderToCommand(config.game.channel_port, stamped=stamped_game)
        )

    frames: Slot[Frame] = Slot()
    grabber = Grabber(window, config.capture.fps, frames, failures=failures)
    follow = config.capture.follow_model
    grabber.start()
    stack.callback(grabber.stop)
    supervisor = None
    if game is not None and game.launch is not None:
        supervisor = GameSupervisor(game, grabber.window_gone, failures)
    ticks: Slot[Tick] = Slot()
    status: Slot[DriveStatus] = Slot()
    # The pictures a recording, the live view and the stream show: each drawn once.
    feeds = {kind: PictureFeed(kind) for kind in ("layout", "hud")}
    losses = LossCurve(Path(config.model.store), line.name)
    recorder = _recorder_for(config, line, frames, ticks, status, record, feeds, losses)
    # Registered before the controller, so on the way out it runs after neutral.
    stack.callback(recorder.close)
    live = stream = None
    if config.live.enabled or config.stream.url:
        watched = WatchedPictures(
            config.record, feeds, frames, ticks, _hud_status_of(status),
            config.capture.size, line.convcam_layer, recorder.draws, losses,
            epoch=recorder.epoch, model_bound_fps=config.live.model_bound_fps,
            capture_fps=config.capture.fps,
        )  # fmt: skip
        watched.start()
        stack.callback(watched.stop)
    if config.live.enabled:
        from agent.live.server import LiveServer  # aiohttp: loaded only to serve

        live = LiveServer(config.live, status, feeds, losses=losses.points, ticks=ticks)
        url = live.start()
        stack.callback(live.stop)
        log.info("live view for OBS: %s (pictures: %slayout.mjpeg, %shud.mjpeg)", url, url, url)
    if config.stream.url:
        # The stream layout, whatever record.mode the recordings use.
        stream = StreamSender(config.stream, feeds["layout"], config.record.fps).start()
        stack.callback(stream.stop)
        log.info("streaming the layout to %s", stream.url)

    controller = open_controller(config.controller, config.game.channel_port, window, failures)
    # Registered after the grabber, so it runs before it: neutral first, then teardown.
    stack.callback(controller.close)

    loop = DriveLoop(
        frames=frames,
        window_ready=lambda: not grabber.window_lost.is_set(),
        to_model_input=partial(
            preprocess,
            capture_size=config.capture.size,
            crop=config.capture.crop,
            input_size=line.input_size,
        ),
        predictor=predictor,
        mapper=ControlMapper.from_config(config.controller),
        controller=controller,
        hz=config.capture.fps,
        ticks=ticks,
        failures=failures,
        hot_swap=hot_swap,
        unstuck=unstuck,
        game_paused=game_paused,
        request_frame=partial(_request_frame, grabber, recorder) if follow else None,
        stop_following=grabber.stop_following if follow else None,
        render_latency=render_latency,
        status=status,
    )
    hotkeys = Hotkeys({
        config.hotkeys.pause: loop.toggle_pause,
        config.hotkeys.quit: partial(stop, "quit hotkey"),
        config.hotkeys.swap: partial(_swap_hotkey, hot_swap),
        config.hotkeys.record: recorder.toggle,
    }, failures)  # fmt: skip
    hotkeys.start()
    stack.callback(hotkeys.stop)
    if hot_swap is not None:
        hot_swap.start()
        stack.callback(hot_swap.stop)
    stop.raise_if_requested()  # e.g. the quit hotkey, pressed while starting
    return _Session(
        window, game, predictor.name, grabber, recorder, controller, loop, hot_swap, ticks,
        render_latency, live, stream, supervisor,
    )  # fmt: skip


def _drive(
    session: _Session,
    config: Config,
    stack: contextlib.ExitStack,
    stop: Stop,
    seconds: float | None,
    live_console: bool,
    record: Path | bool,
) -> DriveSummary:
    """Run the loop's thread until a stop reason; stop it and report."""
    loop = session.loop
    # From here on a signal only sets `stop`: the loop must not be interrupted mid-send.
    thread = threading.Thread(target=loop.run, name="drive-loop", daemon=True)
    started = time.monotonic()
    thread.start()
    if record or config.record.enabled:
        session.recorder.start()
    stack.callback(_join_loop, loop, thread)
    log.info(
        "driving %r with %s via %s",
        session.window.title, session.started_with, session.controller.name,
    )  # fmt: skip
    if session.hot_swap is not None:
        log.info(
            "following %s for newer %s checkpoints (swap.policy %s)",
            Path(config.model.store) / config.model.line, config.model.line, config.swap.policy,
        )  # fmt: skip
    _wait_for_stop(stop, session, seconds, started, live_console)
    # Read while the agent still drives: once the loop stops, the pad goes neutral and the
    # game's next sample would say nobody is driving.
    telemetry = session.game.telemetry if session.game is not None else None
    game_state = record_from(read_last_telemetry(telemetry)) if telemetry else None
    _join_loop(loop, thread)
    elapsed = time.monotonic() - started
    recordings = session.recorder.close()
    if session.live is not None:
        session.live.stop()
    if session.stream is not None:
        session.stream.stop()
    # The capture and the controller stop before their counts are read: no thread changes
    # them after this. (The loop left the controller neutral; closing it again on the way
    # out does nothing.)
    session.grabber.stop()
    session.controller.close()
    if loop.error is not None and stop.reason not in USER_STOPS:
        raise failure_to_raise(loop.error)
    final, _ = loop.status.get()
    assert final is not None  # the loop puts a snapshot when it is built
    return _summary(session, final, stop.reason, elapsed, started, game_state, recordings)


def _summary(
    session: _Session,
    final: DriveStatus,
    stopped_by: str | None,
    elapsed: float,
    started: float,
    game_state: TelemetryRecord | None,
    recordings: Sequence[RecordingReport],
) -> DriveSummary:
    """The end-of-run report: the loop's last status snapshot, plus the loop's and the
    capture's timings (read after their threads ended)."""
    counters = session.loop.counters
    grabber = session.grabber
    latency_p50, latency_p95, latency_p99 = percentiles_ms(counters.latencies, (50, 95, 99))
    busy = [*final.loads, *((swap.at, swap.at) for swap in final.swaps)]
    return DriveSummary(
        model=final.model,
        started_with=session.started_with,
        controller=session.controller.name,
        window=session.window.title,
        stopped_by=stopped_by or "drive loop ended",
        seconds=round(elapsed, 3),
        frames=grabber.frames_grabbed,
        predictions=final.predictions,
        fps=round(grabber.frames_grabbed / elapsed, 2) if elapsed > 0 else 0.0,
        pps=round(final.predictions / elapsed, 2) if elapsed > 0 else 0.0,
        latency_p50_ms=latency_p50,
        latency_p95_ms=latency_p95,
        predict_p50_ms=median_ms(counters.predict_seconds),
        skipped_frames=final.skipped,
        nonfinite_predictions=final.nonfinite,
        deadman_releases=session.controller.releases,
        game=game_state,
        swaps=swap_rows(final.swaps, started),
        rejections=rejection_rows(final.rejections, started),
        unstucks=final.unstucks,
        command_gaps=command_gaps(counters.sent_at.array(), busy),
        recordings=tuple(recordings),
        backend=final.backend,
        latency_p99_ms=latency_p99,
        capture_p50_ms=median_ms(grabber.grab_seconds),
        preprocess_p50_ms=median_ms(counters.preprocess_seconds),
        requested_frames=grabber.requested,
        render_to_command_ms=(
            session.render_latency.report() if session.render_latency is not None else None
        ),
        live=_live_row(session.live),
        stream=session.stream.report() if session.stream is not None else None,
        game_restarts=session.supervisor.restarts if session.supervisor is not None else 0,
    )


def _live_row(live: LiveServer | None) -> LiveRow | None:
    if live is None:
        return None
    counts = live.counts
    return LiveRow(
        counts.viewers, counts.refused, counts.unauthorized, counts.pictures_sent,
        counts.pictures_skipped, counts.pictures_encoded,
    )  # fmt: skip


def _hot_swap_for(
    config: Config,
    line: ModelLine,
    checkpoint: Checkpoint | None,
    predictor: Predictor,
    convcam: bool,
    failures: Failures,
) -> HotSwap | None:
    """The hot swap when this session follows the store; None when a checkpoint is pinned."""
    if not follows_the_store(config):
        return None
    # The second copy is built and compiled now, before driving: a swap later only fills it
    # with weights, off the driving path.
    return HotSwap(
        Path(config.model.store), predictor, _shadow_of(line, convcam, config.inference),
        _store_number(config, line, checkpoint), config.swap, failures=failures,
    )  # fmt: skip


def _unstuck_for(
    config: Config, bundled_game: bool, stack: contextlib.ExitStack
) -> tuple[Unstuck | None, Callable[[], bool]]:
    """Unstuck (None when switched off) and how to tell the game is paused.

    The bundled game says it is paused in its frame records, and has a reset hook that puts
    the car back on the track; other games have neither.
    """
    game_paused: Callable[[], bool] = lambda: False  # noqa: E731
    if not config.unstuck.enabled:
        return None, game_paused
    reset_game = None
    if bundled_game:
        records = FrameRecordListener(config.game.channel_port)
        stack.callback(records.close)
        game_paused = partial(_game_paused, records)
        reset_game = partial(request_reset, config.game.channel_port)
    unstuck = Unstuck(
        StuckDetector(config.unstuck.window, config.unstuck.min_change),
        RecoveryPlan.from_config(config.unstuck, reset_game),
    )
    return unstuck, game_paused


def follows_the_store(config: Config) -> bool:
    """True when `charles drive` swaps in newer checkpoints: "latest", and swapping not off."""
    return config.model.checkpoint == "latest" and config.swap.policy != "off"


def _shadow_of(line: ModelLine, convcam: bool, inference: InferenceConfig) -> Predictor:
    return Predictor(
        build_model(line, "none", inference), line, f"{line.name} (shadow)", convcam=convcam,
        inference=inference, weights_ready=False,
    )  # fmt: skip


def _recorder_for(
    config: Config,
    line: ModelLine,
    frames: Slot[Frame],
    ticks: Slot[Tick],
    status: Slot[DriveStatus],
    record: Path | bool,
    feeds: dict[str, PictureFeed],
    losses: LossCurve,
) -> Recorder:
    """The session's recorder (idle until started by --record, record.enabled or the hotkey)."""
    width, height = config.capture.size
    return Recorder(
        config.record, frames, ticks, _hud_status_of(status), (width, height),
        line.convcam_layer, losses=losses, path=record if isinstance(record, Path) else None,
        feeds=feeds,
    )  # fmt: skip


def _hud_status_of(status: Slot[DriveStatus]) -> Callable[[], Status]:
    """What a drawing thread shows besides the frame and tick; each drawing thread gets its
    own, since the rates are measured between two of that thread's pictures."""
    return partial(_hud_status, status, RateMeter())


def _hud_status(status: Slot[DriveStatus], meter: RateMeter) -> Status:
    """What the recording shows besides the frame and tick (called on the recorder's thread):
    the newest status snapshot, and rates measured between two of its pictures."""
    now, _ = status.get()
    if now is None:
        # The live view's and the stream's thread starts before the drive loop puts its first
        # status, and may draw before it (a fresh clone's CI saw the stream's thread die here).
        return Status(model_name=STARTING)
    rates = meter.update(now)
    last = now.swaps[-1] if now.swaps else None
    return Status(
        model_name=now.model,
        fps=rates.fps,
        pps=rates.pps,
        swaps=len(now.swaps),
        last_swap_to=last.version if last is not None else None,
        last_swap_at=last.at if last is not None else None,
        rejections=len(now.rejections),
        unstucks=now.unstucks,
    )


def _store_number(config: Config, line: ModelLine, checkpoint: Checkpoint | None) -> int:
    """The store version number driving now; 0 when it is not one (fresh weights, the
    reference): then every version in the store is newer."""
    if checkpoint is None:
        return 0
    store_folder = (Path(config.model.store) / line.name).resolve()
    if checkpoint.folder.resolve().parent != store_folder:
        return 0
    return version_number(checkpoint.folder.name) or 0


def _game_paused(records: FrameRecordListener) -> bool:
    record = records.newest()
    return record is not None and record.paused


def _swap_hotkey(hot_swap: HotSwap | None) -> None:
    if hot_swap is None:
        log.info('swap hotkey ignored: not following the store (model.checkpoint is not "latest")')
        return
    hot_swap.request_manual_swap()


def _request_frame(grabber: Grabber, recorder: Recorder) -> None:
    """A slow model wants a fresh frame: only its own frames are grabbed, except while a
    recording needs the capture's full rate."""
    grabber.request_frame(only_on_request=not recorder.recording)


def _join_loop(loop: DriveLoop, thread: threading.Thread) -> None:
    loop.stop()
    if thread.is_alive():
        thread.join(timeout=5.0)


def _wait_for_stop(
    stop: Stop,
    session: _Session,
    seconds: float | None,
    started: float,
    live_console: bool,
) -> None:
    """The main thread's job while driving: watch for stop reasons, keep the bundled game
    running (it is started again from this thread, the one that started it) and draw the
    console."""
    deadline = None if seconds is None else started + seconds
    loop, supervisor = session.loop, session.supervisor
    meter = RateMeter()
    follows_store = session.hot_swap is not None

    def view() -> Any:
        status, _ = loop.status.get()
        assert status is not None  # put when the loop was built
        tick, _ = session.ticks.get()
        return render(
            status, tick, meter.update(status), session.controller.name, session.window.title,
            follows_store,
        )  # fmt: skip

    live: Any = contextlib.nullcontext()
    if live_console:
        from rich.live import Live

        live = Live(view(), refresh_per_second=4, transient=False)
    with live:
        while not stop.event.wait(0.25):
            if deadline is not None and time.monotonic() >= deadline:
                stop("time limit")
            elif loop.stopping:
                stop("drive loop ended")
            elif supervisor is not None:
                supervisor.look()
            if live_console:
                live.update(view())
