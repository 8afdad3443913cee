"""`charles drive` end to end: a real X server, the real bundled game, a real model checkpoint.

The checkpoints here are pilotnet_small networks whose output layers are set to constants
(throttle and steering fixed by the output biases), published to a temporary model store: the
agent runs the whole pipeline (capture, preprocess, compiled predictor, control mapping,
controller) and the car's telemetry shows whether the commands arrived.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.game.channel import free_udp_port
from agent.game.telemetry import read_last_telemetry
from tests.helpers.charles import REPO
from tests.helpers.drives import EXIT_STATUS, drive_command, publish_constant_driver
from tests.helpers.xvfb import focus_window, tap_key, wait_for_window


def telemetry_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def keyboard_seen(telemetry: Path, since: int = 0) -> bool:
    """Did the game get keyboard input in any sample from line `since` on?"""
    return any(sample["source"] == "keyboard" for sample in telemetry_samples(telemetry)[since:])


def input_sources(telemetry: Path) -> str:
    """How many samples each input source drove, and the last sample: for failure messages."""
    samples = telemetry_samples(telemetry)
    counts = Counter(sample["source"] for sample in samples)
    return f"sources {dict(counts)}; last sample {samples[-1] if samples else None}"


def test_drive_starts_the_game_under_its_own_xvfb_and_drives_it(tmp_path: Path) -> None:
    """The README's main command path: no DISPLAY, default config, the game backend."""
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.6, steering=0.0)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    result = subprocess.run(
        drive_command(store, free_udp_port(), "--seconds", "20", "--json"),
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stopped_by"] == "time limit"
    assert summary["controller"] == "game"
    assert "v0001" in summary["model"]
    assert summary["frames"] > 50 and summary["fps"] > 5
    assert summary["predictions"] > 50 and summary["pps"] > 5
    # Capture -> command includes the model's own time, and more (preprocess, send, waiting).
    assert 0 < summary["predict_p50_ms"] < summary["latency_p50_ms"]
    assert summary["latency_p50_ms"] <= summary["latency_p95_ms"] < 1000
    assert summary["deadman_releases"] == 0  # a prediction every frame: never let go
    assert summary["backend"] == "tensorflow"
    assert summary["latency_p95_ms"] <= summary["latency_p99_ms"]
    assert 0 < summary["capture_p50_ms"] < summary["latency_p50_ms"]
    assert 0 < summary["preprocess_p50_ms"] < summary["latency_p50_ms"]
    # The game timed its pictures to the commands made from them: from the picture going up
    # to the physics using the command takes longer than capture -> command alone.
    shown = summary["render_to_command_ms"]
    assert shown["matched"] > 50 and shown["pictures"] == "paired by capture time"
    assert summary["latency_p50_ms"] < shown["p50"] <= shown["p95"] < 1000
    game = summary["game"]
    assert game is not None, "the bundled game's telemetry should be in the summary"
    # The constant 0.6 throttle reached the car through the virtual gamepad and moved it.
    assert game["source"] == "gamepad"
    assert game["accelerate"] == pytest.approx(0.6, abs=0.02)
    assert game["distance"] > 20


@pytest.fixture
def display(x_display: str) -> str:
    return x_display


def start_game(port: int, telemetry: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """The bundled game in its own process, as a user opens it with `charles game`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "game", "--config", str(REPO / "config.toml"),
         "--size", "960x540", "--port", str(port), "--telemetry", str(telemetry)],
        cwd=cwd,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (telemetry.exists() and telemetry.stat().st_size > 0):
        assert process.poll() is None, "the game exited early"
        assert time.monotonic() < deadline, "the game did not start"
        time.sleep(0.2)
    return process


def stop_game(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def game(display: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    port = free_udp_port()
    telemetry = tmp_path / "telemetry.jsonl"
    process = start_game(port, telemetry, tmp_path)
    yield process, telemetry, port
    stop_game(process)


def focus_game() -> None:
    window = wait_for_window(os.environ["DISPLAY"], "Charles CarRacing")
    focus_window(os.environ["DISPLAY"], window.id)


def finish(drive: subprocess.Popen[str], stopped_by: str = "") -> dict:
    """Wait for `charles drive` to end cleanly; its JSON summary.

    The exit status is 0, or 128 + the signal's number when a signal stopped it.
    """
    try:
        out, err = drive.communicate(timeout=30)
    finally:
        if drive.poll() is None:
            drive.kill()
    assert drive.returncode == EXIT_STATUS.get(stopped_by, 0), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def keys_held() -> list[int]:
    """Keycodes the X server currently has down (what a stuck key would show)."""
    from Xlib import display as xdisplay

    connection = xdisplay.Display()
    try:
        keymap = connection.query_keymap()
    finally:
        connection.close()
    return [
        byte * 8 + bit for byte, bits in enumerate(keymap) for bit in range(8) if bits >> bit & 1
    ]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def start_keyboard_drive(port: int, tmp_path: Path) -> subprocess.Popen[str]:
    """`charles drive --backend keyboard` on the focused game, full throttle and steering 0.5.

    Full throttle holds W throughout; steering 0.5 pulses D. (With a pulsed W, the 10 Hz
    telemetry can phase-lock with the 0.1 s pulse period and sample only the gaps.)
    """
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=1.0, steering=0.5)
    focus_game()
    return subprocess.Popen(
        drive_command(store, port, "--backend", "keyboard", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize("way_out", ["SIGTERM", "SIGINT", "quit hotkey"])
def test_keyboard_driving_leaves_no_key_held_on_every_way_out(
    game: tuple[subprocess.Popen[bytes], Path, int], tmp_path: Path, way_out: str
) -> None:
    _process, telemetry, port = game
    drive = start_keyboard_drive(port, tmp_path)
    try:
        # Real key events through the X server get the car going.
        wait_for(
            lambda: (read_last_telemetry(telemetry) or {}).get("speed", 0) > 3,
            timeout=90, what="the car to move under keyboard control",
        )  # fmt: skip
        assert keyboard_seen(telemetry), input_sources(telemetry)
        if way_out == "quit hotkey":
            tap_key(os.environ["DISPLAY"], "F10")
        else:
            drive.send_signal(getattr(signal, way_out))
    finally:
        summary = finish(drive, way_out)
    assert summary["stopped_by"] == way_out
    assert summary["controller"] == "keyboard"
    assert keys_held() == [], "a key was left pressed"
    # And the game agrees: within a moment of the agent leaving, nobody presses anything.
    time.sleep(0.5)
    last = read_last_telemetry(telemetry) or {}
    assert last.get("accelerate") == 0 and last.get("steering") == 0, last


def test_pause_hotkey_releases_every_key_and_resume_drives_again(
    game: tuple[subprocess.Popen[bytes], Path, int], tmp_path: Path
) -> None:
    _process, telemetry, port = game
    drive = start_keyboard_drive(port, tmp_path)
    try:
        wait_for(
            lambda: keyboard_seen(telemetry), timeout=90, what="keyboard input to reach the game",
        )  # fmt: skip
        tap_key(os.environ["DISPLAY"], "F8")
        time.sleep(0.5)
        # Paused: over a second of looking, no key is ever down and the game gets no input.
        paused_from = len(telemetry_samples(telemetry))
        for _ in range(10):
            assert keys_held() == [], "a key is held while paused"
            time.sleep(0.1)
        while_paused = telemetry_samples(telemetry)[paused_from:]
        assert while_paused and all(s["source"] != "keyboard" for s in while_paused)
        assert drive.poll() is None, "pausing must not end the session"

        tap_key(os.environ["DISPLAY"], "F8")
        resumed_from = len(telemetry_samples(telemetry))
        wait_for(
            lambda: keyboard_seen(telemetry, since=resumed_from),
            timeout=20, what="keyboard input after resuming",
        )  # fmt: skip
        tap_key(os.environ["DISPLAY"], "F10")
    finally:
        summary = finish(drive)
    assert summary["stopped_by"] == "quit hotkey"
    assert keys_held() == []


def test_a_closed_window_is_waited_for_and_reacquired(display: str, tmp_path: Path) -> None:
    port = free_udp_port()
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.6, steering=0.0)
    first_telemetry = tmp_path / "first.jsonl"
    first = start_game(port, first_telemetry, tmp_path)
    drive = subprocess.Popen(
        drive_command(store, port, "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    second = None
    try:
        wait_for(
            lambda: (read_last_telemetry(first_telemetry) or {}).get("source") == "gamepad",
            timeout=90, what="the agent to drive the first game",
        )  # fmt: skip
        stop_game(first)
        time.sleep(2.0)
        assert drive.poll() is None, "the agent must wait for the window, not quit"
        second_telemetry = tmp_path / "second.jsonl"
        second = start_game(port, second_telemetry, tmp_path)
        wait_for(
            lambda: (read_last_telemetry(second_telemetry) or {}).get("source") == "gamepad",
            timeout=30, what="the agent to drive the reopened game",
        )  # fmt: skip
        assert (read_last_telemetry(second_telemetry) or {})["accelerate"] == pytest.approx(
            0.6, abs=0.02
        )
        drive.send_signal(signal.SIGTERM)
    finally:
        summary = finish(drive, "SIGTERM")
        if second is not None:
            stop_game(second)
    assert summary["stopped_by"] == "SIGTERM"
    assert summary["game"] is None  # Charles did not start these games itself
