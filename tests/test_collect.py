"""`charles collect`: offscreen frames equal window capture, shards, pairing, key labels."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pygame
import pytest

from agent.capture import WindowQuery, find_window
from agent.capture.screen import open_mss
from agent.config import KeyboardConfig
from agent.game.autopilot import Autopilot
from agent.game.channel import FrameRecord, GamepadReceiver, free_udp_port, subscribe_packet
from agent.game.pairing import FrameRecordListener
from agent.game.sim import HostedCarRacing
from agent.game.stamp import draw_stamp, read_stamp
from agent.inference.preprocess import preprocess
from agent.learn.keylabels import KeyLabels
from agent.learn.shard_watcher import ShardWatcher
from agent.types import ControllerState
from tests.helpers.charles import REPO, assert_one_line_error
from tests.helpers.xvfb import key_down, key_up

CAPTURE = (1280, 720)
INPUT = (160, 90)
SHAPE = (90, 160, 3)
CONFIG = ("--config", str(REPO / "config.toml"))


def _drive_a_while(env: HostedCarRacing, steps: int) -> None:
    autopilot = Autopilot()
    for _ in range(steps):
        env.apply(autopilot.act(env))


_WINDOW_SCRIPT = """
import sys, time
import numpy as np, pygame
from agent.game.autopilot import Autopilot
from agent.game.camera import ASPECT, OffscreenCamera, draw_view
from agent.game.sim import HostedCarRacing, view_rect
pygame.display.init()
window = pygame.display.set_mode((1280, 720))
pygame.display.set_caption("camera equality test")
env = HostedCarRacing()
env.reset(seed=3)
autopilot = Autopilot()
for _ in range(120):  # the car moving, the start's zoom animation over
    env.apply(autopilot.act(env))
draw_view(env, view_rect(ASPECT), window)
pygame.display.flip()
for index, crop in enumerate([(0, 0, 0, 0), (100, 40, 60, 20)]):
    np.save(f"{sys.argv[1]}/offscreen-{index}.npy",
            OffscreenCamera((1280, 720), crop, (160, 90)).frame(env))
print("ready", flush=True)
time.sleep(60)
"""


def test_offscreen_frames_equal_window_capture_pixel_for_pixel(
    x_display: str, tmp_path: Path
) -> None:
    """The faster-than-real-time path gives exactly the samples window capture gives."""
    game = subprocess.Popen(
        [sys.executable, "-c", _WINDOW_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert game.stdout is not None and game.stdout.readline().strip() == "ready"
        region = find_window(WindowQuery("camera equality test")).region()
        with open_mss() as screen:  # the capture's own way to open mss
            shot = screen.grab(
                {"left": region.left, "top": region.top, "width": 1280, "height": 720}
            )
        grabbed = np.frombuffer(shot.raw, np.uint8).reshape(720, 1280, 4)
    finally:
        game.kill()
        game.wait()
    for index, crop in enumerate([(0, 0, 0, 0), (100, 40, 60, 20)]):
        offscreen = np.load(tmp_path / f"offscreen-{index}.npy")
        assert offscreen.shape == SHAPE
        assert offscreen.std() > 10  # a real picture, not a blank one
        np.testing.assert_array_equal(offscreen, preprocess(grabbed, CAPTURE, crop, INPUT))


def _collect(run_charles, folder: Path, *extra: str):
    return run_charles(
        "collect", *CONFIG, "--render", "offscreen", "--data", str(folder / "data"),
        "--set", "data.samples_per_shard=40", "--set", "collect.seed=7", *extra,
        cwd=folder,
    )  # fmt: skip


def _all_samples(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shards = ShardWatcher(folder, SHAPE).poll()
    assert shards, "no shards written"
    return (
        np.concatenate([s.frames for s in shards]),
        np.concatenate([s.labels for s in shards]),
        np.concatenate([s.sets for s in shards]),
    )


def test_offscreen_autopilot_collection_is_balanced_deterministic_and_complete(
    tmp_path: Path, run_charles
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        result = _collect(run_charles, folder, "--frames", "300")
        assert result.returncode == 0, result.stderr
        assert "collected 300 frames" in result.stdout
        assert "kept" in result.stdout and "track seeds: 7" in result.stdout
    frames_a, labels_a, sets_a = _all_samples(first / "data")
    frames_b, labels_b, _sets_b = _all_samples(second / "data")
    # Same seed, same frames and labels: the collector adds no randomness of its own.
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    # Balancing dropped some frames, and every kept one is in at least one set.
    assert 0 < len(frames_a) < 300
    assert sets_a.any(axis=1).all()
    # Labels are the autopilot's: steering varies, throttle within its pedal range.
    assert labels_a[:, 1].std() > 0.05
    assert labels_a[:, 0].max() <= 0.5 + 1e-6
    histograms = list((first / "data").glob("histogram-*.png"))
    assert len(histograms) == 1 and histograms[0].stat().st_size > 1000


def test_collect_refuses_offscreen_human_and_autopilot_for_other_games(
    tmp_path: Path, run_charles
) -> None:
    result = run_charles(
        "collect",
        *CONFIG,
        "--render",
        "offscreen",
        "--source",
        "human",
        "--frames",
        "5",
        cwd=tmp_path,
    )
    assert_one_line_error(result, "collect.render")
    result = run_charles(
        "collect", *CONFIG, "--source", "autopilot", "--frames", "5",
        "--set", "game.title='Some Other Game'", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "bundled game", "--source human")


def test_frame_records_round_trip_and_reject_garbage() -> None:
    record = FrameRecord(
        frame=70000, episode=2, shown_at=123.456,
        applied=ControllerState(0.25, 0.5, 0.0), autopilot=None, speed=12.5,
    )  # fmt: skip
    back = FrameRecord.unpack(record.pack())
    assert back is not None
    assert (back.frame, back.episode, back.autopilot) == (70000, 2, None)
    assert back.applied == ControllerState(0.25, 0.5, 0.0)
    assert back.shown_at == pytest.approx(123.456)
    assert FrameRecord.unpack(b"CHFR" + bytes(10)) is None
    assert FrameRecord.unpack(b"XXXX" + record.pack()[4:]) is None


def test_the_game_sends_frame_records_only_to_subscribers() -> None:
    port = free_udp_port()
    receiver = GamepadReceiver(port)
    try:
        with FrameRecordListener(port) as listener:
            deadline = time.monotonic() + 3
            while not receiver._subscribers and time.monotonic() < deadline:
                receiver.poll()
                time.sleep(0.02)
            assert receiver._subscribers, "the listener never subscribed"
            shown = time.monotonic()
            suggestion = ControllerState(-0.3, 0.4, 0.0)
            receiver.publish_frame(FrameRecord(5, 1, shown, ControllerState(), suggestion, 3.0))
            deadline = time.monotonic() + 3
            found = None
            while found is None and time.monotonic() < deadline:
                found = listener.record_for(shown + 0.01)
                time.sleep(0.02)
            assert found is not None and found.frame == 5
            assert found.autopilot is not None
            assert found.autopilot.steering == pytest.approx(suggestion.steering)
            assert found.autopilot.accelerate == pytest.approx(suggestion.accelerate)
            # A grab before the picture was shown is not paired with it.
            assert listener.record_for(shown - 0.001) is None
            # Nor one long after (the game stalled): no stale label.
            assert listener.record_for(shown + 5.0) is None
    finally:
        receiver.close()


def test_subscribers_are_capped(tmp_path: Path) -> None:
    import socket

    port = free_udp_port()
    receiver = GamepadReceiver(port)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    try:
        for index, sender in enumerate(sockets):
            sender.sendto(subscribe_packet(index), ("127.0.0.1", port))
        time.sleep(0.2)
        receiver.poll()
        assert len(receiver._subscribers) == 8
    finally:
        for sender in sockets:
            sender.close()
        receiver.close()


def test_stamps_round_trip() -> None:
    surface = pygame.Surface((200, 20))
    for number in (0, 1, 12345, 65535):
        draw_stamp(surface, number)
        rgb = pygame.surfarray.array3d(surface).swapaxes(0, 1)
        assert read_stamp(rgb) == number


def test_window_collection_pairs_frames_with_the_games_records(
    x_display: str, tmp_path: Path, run_charles
) -> None:
    port = free_udp_port()
    result = run_charles(
        "collect", *CONFIG, "--render", "window", "--frames", "90",
        "--data", str(tmp_path / "data"),
        "--set", f"game.channel_port={port}", "--set", "data.samples_per_shard=20",
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "collected 90 frames" in result.stdout
    assert "paired by display time" in result.stdout
    frames, labels, _sets = _all_samples(tmp_path / "data")
    assert np.isfinite(labels).all() and np.abs(labels).max() <= 1.0
    assert frames.shape[1:] == SHAPE and frames.std() > 10
    assert len(frames) > 0


def test_pairing_picks_the_frame_on_screen(x_display: str) -> None:
    """Measured with stamped frames: a grab gets the record of the picture it shows."""
    from agent.bench.pairing import measure_pairing

    result = measure_pairing(seconds=4.0, port=free_udp_port())
    assert result.grabs > 30
    # Lenient on purpose (a loaded 2-core machine delays the X server now and then); the
    # benchmark (charles bench pairing) reports the real numbers.
    assert result.exact / result.grabs >= 0.6, result.describe()
    assert (result.exact + result.off_by_one) / result.grabs >= 0.9, result.describe()


def test_key_labels_follow_the_driving_keys_only_while_the_game_has_focus(
    x_display: str,
) -> None:
    focused = [True]
    keys = KeyboardConfig()
    with KeyLabels(keys, lambda: focused[0]) as labels:  # returns once it listens
        key_down(x_display, "w")
        key_down(x_display, "a")
        deadline = time.monotonic() + 3
        while labels.state() != ControllerState(-1.0, 1.0, 0.0) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert labels.state() == ControllerState(-1.0, 1.0, 0.0)
        focused[0] = False
        assert labels.state() is None  # not driving the game: no label at all
        focused[0] = True
        key_up(x_display, "w")
        key_up(x_display, "a")
        deadline = time.monotonic() + 3
        while labels.state() != ControllerState() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert labels.state() == ControllerState()


def test_key_labels_go_quiet_when_the_x_server_goes_away(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No traceback from the listener's thread, no label from then on, one log line."""
    from agent.runtime.display import xvfb

    unhandled: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    with xvfb(320, 240) as display:
        monkeypatch.setenv("DISPLAY", display)
        labels = KeyLabels(KeyboardConfig(), lambda: True)
        assert labels.state() == ControllerState()
    labels._listener.join(timeout=10)
    assert not labels._listener.is_alive()
    assert unhandled == []
    assert labels.state() is None
    assert "the driving keys can no longer be followed" in caplog.text
    labels.stop()  # with the server gone: nothing to tell, and no error


def test_frame_records_with_impossible_values_are_dropped_or_cleaned() -> None:
    import math
    import struct

    def packet(shown_at: float, speed: float) -> bytes:
        return struct.pack("<4sIIdfffffffB", b"CHFR", 1, 1, shown_at, 0, 0, 0, 0, 0, 0, speed, 0)

    assert FrameRecord.unpack(packet(float("nan"), 1.0)) is None
    assert FrameRecord.unpack(packet(float("inf"), 1.0)) is None
    record = FrameRecord.unpack(packet(5.0, float("inf")))
    assert record is not None and math.isnan(record.speed)


def test_a_nan_label_is_never_clamped_into_full_lock(tmp_path: Path) -> None:
    from agent.config import Config, DataConfig
    from agent.learn.sink import SampleSink

    sink = SampleSink(Config(data=DataConfig(folder=str(tmp_path))), "test", SHAPE)
    frame = np.zeros(SHAPE, np.uint8)
    sink.offer(frame, float("nan"), 0.0, 0.0)
    sink.offer(frame, 0.2, float("nan"), 0.0)
    sink.offer(frame, 0.2, 0.3, 0.0)
    sink.close()
    assert (sink.frames, sink.unlabelled, sink.kept) == (3, 2, 1)
    _frames, labels, _sets = _all_samples(tmp_path)
    np.testing.assert_allclose(labels, [[0.2, 0.3]])


def test_window_dagger_needs_the_games_own_gamepad(tmp_path: Path, run_charles) -> None:
    result = run_charles(
        "collect", *CONFIG, "--source", "dagger", "--render", "window", "--frames", "5",
        "--set", "controller.backend=keyboard", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "controller.backend", '"game"')


def test_dagger_frames_the_agent_drives_teach_steering_only(tmp_path: Path, run_charles) -> None:
    """With the agent at the wheel all the time, no frame may join the throttle set: the
    autopilot's pedal label answers a speed the agent, not the autopilot, chose."""
    from tests.helpers.drives import publish_constant_driver

    publish_constant_driver(tmp_path / "models", throttle=0.3, steering=0.0)
    result = _collect(
        run_charles, tmp_path, "--source", "dagger", "--frames", "150",
        "--set", "collect.autopilot_share=0.0", "--set", f"model.store='{tmp_path / 'models'}'",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    _frames, _labels, sets = _all_samples(tmp_path / "data")
    assert len(sets) > 20
    assert not sets[:, 0].any()  # throttle set: none
    assert sets[:, 1].all()  # every kept frame is in the steering set
