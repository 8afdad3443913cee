"""`charles drive` end to end: a real X server, the real bundled game, a real model checkpoint.

The checkpoints here are pilotnet_small networks whose output layers are set to constants
(throttle and steering fixed by the output biases), published to a temporary model store: the
agent runs the whole pipeline (capture, preprocess, compiled predictor, control mapping,
controller) and the car's telemetry shows whether the commands arrived.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.game.telemetry import read_last_telemetry
from agent.nets.registry import get_line
from agent.store import publish
from tests.conftest import REPO
from tests.xvfb import wait_for_window, xvfb

LINE = "pilotnet_small"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def publish_constant_driver(store: Path, throttle: float, steering: float) -> None:
    """A checkpoint that always predicts (throttle, steering), whatever it sees."""
    model = get_line(LINE).build("none")
    for name, value in (("throttle", throttle), ("steering", steering)):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([np.zeros_like(kernel), np.full_like(bias, math.atanh(value))])
    publish(model, store, LINE, batches=0, note=f"constant {throttle}, {steering}")


def drive_command(store: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "drive", "--config", str(REPO / "config.toml"),
        "--model", LINE, "--set", f"model.store={json.dumps(str(store))}",
        "--set", f"game.channel_port={port}", *extra,
    ]  # fmt: skip


def telemetry_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


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
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p95_ms"] < 1000
    game = summary["game"]
    assert game is not None, "the bundled game's telemetry should be in the summary"
    # The constant 0.6 throttle reached the car through the virtual gamepad and moved it.
    assert game["source"] == "gamepad"
    assert game["accelerate"] == pytest.approx(0.6, abs=0.02)
    assert game["distance"] > 20


@pytest.fixture
def display() -> Iterator[str]:
    with xvfb(1600, 900) as name:
        previous = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = name
        try:
            yield name
        finally:
            if previous is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = previous


@pytest.fixture
def game(display: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """The bundled game in its own process, as a user would open it with `charles game`."""
    port = free_udp_port()
    telemetry = tmp_path / "telemetry.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "game", "--config", str(REPO / "config.toml"),
         "--size", "960x540", "--port", str(port), "--telemetry", str(telemetry)],
        cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (telemetry.exists() and telemetry.stat().st_size > 0):
        assert process.poll() is None, "the game exited early"
        assert time.monotonic() < deadline, "the game did not start"
        time.sleep(0.2)
    yield process, telemetry, port
    process.terminate()
    process.wait(timeout=10)


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


@pytest.mark.parametrize("way_out", ["SIGTERM", "SIGINT", "quit hotkey"])
def test_keyboard_driving_leaves_no_key_held_on_every_way_out(
    game: tuple[subprocess.Popen[bytes], Path, int], tmp_path: Path, way_out: str
) -> None:
    _process, telemetry, port = game
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.9, steering=0.5)
    window = wait_for_window(os.environ["DISPLAY"], "Charles CarRacing")
    subprocess.run(["xdotool", "windowfocus", "--sync", str(window.id)], check=True)
    drive = subprocess.Popen(
        drive_command(store, port, "--backend", "keyboard", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        # The keyboard backend holds W (throttle 0.9) most of the time: the car gets going.
        wait_for(
            lambda: (read_last_telemetry(telemetry) or {}).get("speed", 0) > 3,
            timeout=90, what="the car to move under keyboard control",
        )  # fmt: skip
        # Pulse-width presses leave gaps, so look for keyboard input anywhere in the run.
        assert any(sample["source"] == "keyboard" for sample in telemetry_samples(telemetry))
        if way_out == "quit hotkey":
            subprocess.run(["xdotool", "key", "F10"], check=True)
        else:
            drive.send_signal(getattr(signal, way_out))
        out, err = drive.communicate(timeout=30)
    finally:
        if drive.poll() is None:
            drive.kill()
    assert drive.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by"] == way_out
    assert summary["controller"] == "keyboard"
    assert keys_held() == [], "a key was left pressed"
    # And the game agrees: within a moment of the agent leaving, nobody presses anything.
    time.sleep(0.5)
    last = read_last_telemetry(telemetry) or {}
    assert last.get("accelerate") == 0 and last.get("steering") == 0, last
