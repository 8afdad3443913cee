"""Recording: the video clock, the writer's bounded queue, and real recordings of the bundled
game decoded back with PyAV (length, HUD pixels, kill -9, the layout's Convcam)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest

from agent.config import RecordConfig
from agent.controllers.null import NullController
from agent.drive.control import ControlMapper
from agent.drive.loop import DriveLoop
from agent.game.channel import free_udp_port
from agent.inference.convcam import tile
from agent.inference.predictor import Predictor
from agent.inference.preprocess import preprocess
from agent.nets.registry import get_line
from agent.record import draw
from agent.record.clock import ShownFrames, VideoClock
from agent.record.hud import Status, hud_geometry
from agent.record.layout import CONVCAM_BOX, INPUT_BOX
from agent.record.recorder import Recorder, recording_path
from agent.record.writer import choose_encoder, encoder_opens
from agent.runtime.slot import Slot
from agent.types import Frame, Region, Tick
from tests.helpers import waiting
from tests.helpers.charles import REPO, assert_one_line_error
from tests.helpers.clock import FakeClock
from tests.helpers.drives import Drive, drive_command, publish_constant_driver, wait_until
from tests.helpers.drives import without_display as no_display
from tests.helpers.models import constant_driver
from tests.helpers.xvfb import key_down, key_up, tap_key
from tests.test_record_files import top_level_boxes

FPS = 30


def decode(path: Path) -> list[np.ndarray]:
    """Every picture of a video file, BGR, as a player would show them."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 45) -> bool:
    """H.264 in yuv420p changes colours a little: compare with a tolerance."""
    return bool((np.abs(pixel.astype(int) - np.array(colour)) <= tolerance).all())


# --- the video clock --------------------------------------------------------------------------


def test_the_video_clock_hands_out_each_slot_once_on_wall_time() -> None:
    clock = VideoClock(30, start=100.0)
    assert list(clock.due(100.0)) == [0]
    assert list(clock.due(100.01)) == []  # slot 1 is at 100.0333
    assert list(clock.due(100.034)) == [1]
    # A stall of 0.2 s: every slot it covered is handed out, so the length stays true.
    assert list(clock.due(100.234)) == [2, 3, 4, 5, 6, 7]
    assert clock.seconds == pytest.approx(8 / 30)
    assert clock.next_at() == pytest.approx(100.0 + 8 / 30)


def test_repeated_and_left_out_frames_are_counted() -> None:
    shown = ShownFrames()
    shown.show(seq=5, slots=1)  # the first frame
    shown.show(seq=5, slots=1)  # nothing new captured: a repeat
    shown.show(seq=8, slots=1)  # 6 and 7 were captured and never shown
    shown.show(seq=9, slots=3)  # a stall: one frame fills three slots
    assert (shown.shown, shown.repeated, shown.left_out) == (6, 3, 2)


def test_a_session_numbers_its_recordings(tmp_path: Path) -> None:
    asked = tmp_path / "run.mp4"
    assert recording_path(tmp_path, asked, 1) == asked
    assert recording_path(tmp_path, asked, 2) == tmp_path / "run-2.mp4"
    named = recording_path(tmp_path / "videos", None, 1)
    assert named.parent == tmp_path / "videos" and named.name.startswith("charles-")


# --- the writer's queue -----------------------------------------------------------------------


STUCK_WRITER = """
import json, os, sys, threading
from pathlib import Path
import numpy as np
from agent.record.writer import VideoOutput, VideoWriter

pipe = Path(sys.argv[1])
os.mkfifo(pipe)
# Opening a pipe nobody reads blocks, as a hung disk would.
writer = VideoWriter(lambda: VideoOutput(pipe, os.open(pipe, os.O_WRONLY)), 30, "libx264",
                     queue_size=5)
picture = np.zeros((64, 64, 3), np.uint8)
for index in range(100):
    writer.offer(picture, index)
print(json.dumps(writer.counts.__dict__), flush=True)
# Unstick it (read the pipe): what was queued is written, and the file is finished.
threading.Thread(target=lambda: pipe.read_bytes(), daemon=True).start()
writer.close()
print(json.dumps(writer.counts.__dict__), flush=True)
os._exit(0)
"""


def test_a_full_queue_drops_pictures_and_never_blocks(tmp_path: Path) -> None:
    """A writer stuck on its output (a pipe nobody reads: opening it blocks, as on a hung disk)
    must cost pictures, never the caller's time. In a child process with a time
    limit, so a writer that blocks its caller fails this test instead of hanging the suite."""
    result = subprocess.run(
        [sys.executable, "-c", STUCK_WRITER, str(tmp_path / "stuck.mp4")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    stuck, finished = (json.loads(line) for line in result.stdout.splitlines())
    assert stuck["offered"] == 100
    # The writer thread took one picture before it got stuck; the queue holds five.
    assert stuck["dropped"] in (94, 95)
    assert stuck["written"] == 0
    assert finished["written"] == 100 - finished["dropped"] > 0


# --- recording the bundled game ---------------------------------------------------------------


def test_a_recording_of_the_game_has_its_true_length_and_the_hud(tmp_path: Path) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.6, steering=-0.5)
    video = tmp_path / "drive.mp4"
    drive = Drive(
        drive_command(store, free_udp_port(), "--seconds", "8", "--json", "--record", str(video)),
        tmp_path, no_display(),
    )  # fmt: skip
    assert drive.finish(180) == 0, drive.stderr[-3000:]
    [report] = drive.summary()["recordings"]
    assert report["path"] == str(video) and report["error"] is None
    assert report["encoder"] == "libx264"
    pictures = decode(video)
    # The clock is true: one picture per 1/30 s of the time driven, within a frame per second.
    # Those a slow encoder could not take are dropped (counted), never waited for: the file
    # holds the rest (a loaded 2-core machine wrote 103 of 246 once).
    driven = drive.summary()["seconds"]
    assert abs(report["frames"] - driven * FPS) <= driven
    assert len(pictures) == report["written"] == report["frames"] - report["dropped"] >= 1
    with av.open(str(video)) as container:  # what browsers play: H.264, 4:2:0, MP4
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.width, stream.height) == (1280, 720)
        times = [float(frame.time) for frame in container.decode(video=0)]
    # ... and so are the file's timestamps: the picture of slot k plays at k / 30 s. Pictures
    # a slow encoder dropped leave their slots' times out, so the last picture played is
    # between the last written slot and the last slot.
    first_possible = (report["written"] - 1) / FPS - 1.5 / FPS
    last_possible = (report["frames"] - 1) / FPS + 1.5 / FPS
    assert first_possible <= times[-1] <= last_possible, (times[-1], report)
    assert all(b > a for a, b in itertools.pairwise(times))  # never two pictures at one time
    # The HUD: the constant driver's controller values as bars where the HUD draws them.
    picture = pictures[len(pictures) // 2]  # one from mid-drive, however many were written
    geometry = hud_geometry(1280, 720)
    left, top, width, height = geometry.bar(0)  # accelerate 0.6: filled to 60 %
    middle = top + height // 2
    assert near(picture[middle, left + int(0.4 * width)], draw.GREEN)
    assert near(picture[middle, left + int(0.8 * width)], draw.TRACK)
    left, top, width, height = geometry.bar(1)  # brake 0: empty
    assert near(picture[top + height // 2, left + width // 4], draw.TRACK)
    left, top, width, height = geometry.bar(2)  # steering -0.5: half way to the left
    middle, centre = top + height // 2, left + width // 2
    assert near(picture[middle, centre - width // 8], draw.BLUE)
    assert near(picture[middle, centre - 3 * width // 8], draw.TRACK)
    assert near(picture[middle, centre + width // 8], draw.TRACK)


def test_kill_9_while_recording_leaves_a_playable_file_with_every_fragment_on_disk(
    tmp_path: Path,
) -> None:
    """kill -9 loses only what was not yet in a complete fragment on disk, and fragments are
    short (a keyframe every half second), so that is at most the writer's queue (1 s) and half
    a second more. Counted in fragments, not seconds: a loaded machine starves the niced writer
    (once 15 pictures in 3.5 s), which a wall-clock bound would blame on the file."""
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    video = tmp_path / "killed.mp4"
    drive = Drive(drive_command(store, free_udp_port(), "--record", str(video)), tmp_path,
                  no_display())  # fmt: skip
    drive.wait_for_log("recording to")
    # A few fragments: a careless encoder setting (a keyframe every 2-5 s) makes them long,
    # which the keyframe check below catches.
    wait_until(lambda: complete_fragments(video.read_bytes()) >= 4, 90, "four fragments")
    on_disk = video.read_bytes()
    drive.process.kill()
    drive.finish()
    before = tmp_path / "before-the-kill.mp4"
    before.write_bytes(on_disk)
    with av.open(str(video)) as container:  # plays: every fragment before the kill decodes
        keyframes = [frame.key_frame for frame in container.decode(video=0)]
    assert len(keyframes) >= len(decode(before)) > 0
    starts = [number for number, key in enumerate(keyframes) if key]
    gaps = [b - a for a, b in itertools.pairwise([*starts, len(keyframes)])]
    assert len(starts) >= 4 and max(gaps) <= FPS // 2, gaps  # fragments of half a second


def complete_fragments(data: bytes) -> int:
    """Complete fragments (moof + mdat) in the bytes of a fragmented MP4."""
    return [kind for kind, _end in top_level_boxes(data)].count(b"mdat")


# --- the layout, in process -------------------------------------------------------------------


LINE = get_line("pilotnet_small")


class CountingPredictor(Predictor):
    """A real predictor that counts its forward passes."""

    passes = 0

    def predict(self, frame: np.ndarray):  # type: ignore[no-untyped-def]
        self.passes += 1
        return super().predict(frame)


def test_layout_shows_the_driving_predictions_convcam_with_one_pass_per_frame(
    tmp_path: Path,
) -> None:
    """The real loop and predictor; the recording on a fake clock, one slot per frame: each
    frame is put, predicted on, and then its slot comes."""
    predictor = CountingPredictor(
        constant_driver(0.5, 0.25), LINE, "constant", convcam=True, warmup_runs=1
    )
    predictor.passes = 0
    frames: Slot[Frame] = Slot()
    ticks: Slot[Tick] = Slot()
    loop = DriveLoop(
        frames=frames, window_ready=lambda: True,
        to_model_input=partial(preprocess, capture_size=(1280, 720), crop=(0, 0, 0, 0),
                               input_size=LINE.input_size),
        predictor=predictor, mapper=ControlMapper(), controller=NullController(), hz=60,
        ticks=ticks,
    )  # fmt: skip
    config = RecordConfig(mode="layout", encoder="libx264", folder=str(tmp_path))
    clock = FakeClock()
    recorder = Recorder(
        config, frames, ticks, lambda: Status("constant"), (1280, 720), LINE.convcam_layer,
        clock=clock,
    )  # fmt: skip
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    recorder.start()
    clock.settle(waiters=1)  # slot 0 is drawn at once, before any frame
    clock.advance(0.5 / FPS)  # half way between slots from here on
    rng = np.random.default_rng(3)
    for seq in range(1, 31):  # one second of distinct 30 fps frames
        # Blocks of 16 pixels: still blocks in the model's 160x90 input, so its panel shows them.
        blocks = rng.integers(0, 256, (45, 80, 4), dtype=np.uint8)
        image = blocks.repeat(16, axis=0).repeat(16, axis=1)
        frames.put(Frame(image, clock.now(), seq, Region(0, 0, 1280, 720)))
        assert waiting.wait_until(lambda seq=seq: _tick_seq(ticks) == seq, 30.0), f"no tick {seq}"
        clock.advance(1 / FPS)
    loop.stop()
    thread.join(10)
    [report] = recorder.close()
    # Recording on, still exactly one forward pass per prediction: the Convcam came with it.
    assert loop.counters.predictions == predictor.passes == 30
    assert (report.frames, report.repeated, report.left_out) == (31, 0, 0)
    last = ticks.get()[0]
    assert last is not None and last.prediction is not None
    assert last.prediction.convcam is not None
    assert last.prediction.convcam.shape == (4, 13, 64)
    picture = decode(Path(report.path))[-1]
    left, top, width, height = CONVCAM_BOX
    panel = picture[top : top + height, left : left + width].astype(int)
    expected = tile(last.prediction.convcam)
    assert panel.max() > 100, "the Convcam panel is empty"
    # The tiles (8 x 8 of 4x13) enlarged to fit the panel's width, centred in it.
    factor = min(width / expected.shape[1], height / expected.shape[0])
    shown_h = int(expected.shape[0] * factor)
    rows_lit = np.flatnonzero(panel.max(axis=(1, 2)) > 60)
    assert rows_lit[-1] - rows_lit[0] <= shown_h
    left, top, width, height = INPUT_BOX
    assert picture[top : top + height, left : left + width].std() > 20  # the model's input


def _tick_seq(ticks: Slot[Tick]) -> int:
    """The capture sequence number of the frame the newest tick was computed from (0: none)."""
    tick, _ = ticks.get()
    return tick.frame.seq if tick is not None and tick.frame is not None else 0


def test_every_slot_of_the_video_clock_shows_the_newest_frame(tmp_path: Path) -> None:
    """On a fake clock: a slot per 1/30 s, whatever the frames do. A stall repeats the last
    frame (the video's length stays true), a burst leaves frames out, and both are counted."""
    frames: Slot[Frame] = Slot()
    config = RecordConfig(mode="hud", encoder="libx264", folder=str(tmp_path))
    clock = FakeClock()
    recorder = Recorder(
        config, frames, Slot(), lambda: Status("constant"), (320, 180), LINE.convcam_layer,
        clock=clock,
    )  # fmt: skip
    image = np.zeros((180, 320, 4), np.uint8)
    recorder.start()
    clock.settle(waiters=1)  # slot 0, before any frame
    clock.advance(0.5 / FPS)
    for seq in range(1, 11):  # slots 1-10: one frame each
        frames.put(Frame(image, clock.now(), seq, Region(0, 0, 320, 180)))
        clock.advance(1 / FPS)
    clock.advance(6 / FPS)  # a stall of the capture: slots 11-16 show frame 10 again
    for seq in range(11, 14):  # a burst: slot 17 shows only the newest of three
        frames.put(Frame(image, clock.now(), seq, Region(0, 0, 320, 180)))
    clock.advance(1 / FPS)
    [report] = recorder.close()
    assert (report.frames, report.repeated, report.left_out) == (18, 6, 2)
    assert report.seconds == round(18 / FPS, 3)
    assert report.error is None
    assert len(decode(Path(report.path))) == report.written == 18 - report.dropped


class StuckDrawing:
    """A HUD status that, once `stuck` is set, blocks the drawing thread (signalling `inside`)
    until `unstuck`: a recording thread the machine starves."""

    def __init__(self) -> None:
        self.stuck, self.inside, self.unstuck = (threading.Event() for _ in range(3))

    def status(self) -> Status:
        if self.stuck.is_set():
            self.inside.set()
            self.unstuck.wait(10.0)
        return Status("constant")

    def recorder(self, folder: Path, frames: Slot[Frame], clock: FakeClock) -> Recorder:
        config = RecordConfig(mode="hud", encoder="libx264", folder=str(folder))
        return Recorder(
            config, frames, Slot(), self.status, (320, 180), LINE.convcam_layer, clock=clock
        )


def test_a_recording_late_for_its_slots_fills_every_one_it_missed(tmp_path: Path) -> None:
    """Its thread stuck drawing (a busy machine) while the clock goes on: when it comes back it
    fills every slot it missed with the newest frame, so the video's length stays true."""
    frames: Slot[Frame] = Slot()
    clock = FakeClock()
    drawing = StuckDrawing()
    recorder = drawing.recorder(tmp_path, frames, clock)
    stuck, inside, unstuck = drawing.stuck, drawing.inside, drawing.unstuck
    image = np.zeros((180, 320, 4), np.uint8)
    recorder.start()
    clock.settle(waiters=1)  # slot 0
    clock.advance(0.5 / FPS)
    frames.put(Frame(image, clock.now(), 1, Region(0, 0, 320, 180)))
    clock.advance(1 / FPS)  # slot 1: frame 1
    stuck.set()
    clock.jump(1 / FPS)  # slot 2 (frame 1 again) is being drawn, and drawing it takes long
    assert inside.wait(10.0)
    frames.put(Frame(image, clock.now(), 2, Region(0, 0, 320, 180)))
    clock.jump(5 / FPS)  # slots 3-7 pass meanwhile
    stuck.clear()
    unstuck.set()
    clock.settle()  # back: slots 3-7 at once, all frame 2
    [report] = recorder.close()
    assert (report.frames, report.repeated, report.left_out) == (8, 1 + 4, 0)
    assert report.seconds == round(8 / FPS, 3)
    assert len(decode(Path(report.path))) == report.written == 8 - report.dropped


def test_a_recording_stopped_while_late_still_lasts_until_its_stop(tmp_path: Path) -> None:
    """Stopped while its thread is stuck drawing (a busy machine starves it: it runs niced),
    the recording still fills the slots before the stop, so it lasts as long as it ran (a
    loaded CI machine's recording came out a second short of its drive)."""
    frames: Slot[Frame] = Slot()
    clock = FakeClock()
    drawing = StuckDrawing()
    recorder = drawing.recorder(tmp_path, frames, clock)
    stuck, inside, unstuck = drawing.stuck, drawing.inside, drawing.unstuck
    image = np.zeros((180, 320, 4), np.uint8)
    frames.put(Frame(image, clock.now(), 1, Region(0, 0, 320, 180)))
    recorder.start()
    clock.settle(waiters=1)  # slot 0
    stuck.set()
    clock.jump(1 / FPS)  # slot 1 is being drawn, and drawing it takes long
    assert inside.wait(10.0)
    clock.jump(9.5 / FPS)  # slots 2-10 pass meanwhile; slot 11 would start after the stop
    recorder.stop()
    stuck.clear()
    unstuck.set()
    [report] = recorder.close()
    assert report.frames == 11 and report.seconds == round(11 / FPS, 3)
    assert len(decode(Path(report.path))) == report.written == 11 - report.dropped


# --- starting and stopping --------------------------------------------------------------------


def test_the_record_hotkey_starts_and_stops_recordings_during_a_drive(
    x_display: str, tmp_path: Path
) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    video = tmp_path / "clip.mp4"
    drive = Drive(
        drive_command(store, free_udp_port(), "--json", "--record", str(video)), tmp_path,
        {**os.environ, "DISPLAY": x_display},
    )  # fmt: skip
    try:
        drive.wait_for_log("recording to")
        time.sleep(2.0)  # what it records: real time in a real drive
        tap_key(x_display, "F7")  # stop the first recording
        drive.wait_for_log("recording stopped")
        # and start a second one, the key held down for longer than the X server waits before
        # it repeats a key: the repeats must not toggle it again (CI once saw 11 recordings)
        key_down(x_display, "F7")
        time.sleep(1.5)
        key_up(x_display, "F7")
        wait_until(lambda: drive.stderr.count("recording to") >= 2, 20, "a second recording")
        time.sleep(2.0)
        tap_key(x_display, "F10")
    finally:
        status = drive.finish(60)
    assert status == 0, drive.stderr[-3000:]
    recordings = drive.summary()["recordings"]
    assert len(recordings) == 2, [report["path"] for report in recordings]
    first, second = recordings
    assert (first["path"], second["path"]) == (str(video), str(tmp_path / "clip-2.mp4"))
    for report in (first, second):
        assert report["error"] is None and report["seconds"] > 1.0
        # As many pictures as the writer took (a starved one on a loaded machine took 4 of 60):
        # every slot is either in the file or counted as dropped.
        assert len(decode(Path(report["path"]))) == report["written"] >= 1
        assert report["written"] + report["dropped"] == report["frames"] > FPS


def test_a_linked_record_path_is_one_line_before_anything_starts(
    tmp_path: Path, run_charles
) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("not a video")
    link = tmp_path / "video.mp4"
    link.symlink_to(target)
    result = run_charles(
        "drive", "--seconds", "1", "--record", str(link), "--config", str(REPO / "config.toml")
    )
    assert_one_line_error(result, "--record", "symbolic link")
    assert target.read_text() == "not a video"
    assert "driving" not in result.stderr


def test_an_encoder_that_does_not_open_here_is_one_line(tmp_path: Path, run_charles) -> None:
    if encoder_opens("h264_nvenc"):
        pytest.skip("this machine has a working NVENC")
    result = run_charles(
        "drive", "--seconds", "1", "--record", str(tmp_path / "v.mp4"),
        "--set", "record.encoder=h264_nvenc", "--config", str(REPO / "config.toml"),
    )  # fmt: skip
    assert_one_line_error(result, "record.encoder is 'h264_nvenc'", 'record.encoder = "auto"')
    assert choose_encoder("auto") == "libx264"  # auto falls back instead
