"""Hot swap end to end: `charles drive` drives the real bundled game while this test publishes
checkpoints into its store, good ones and every bad kind, and the game's telemetry shows which
model is driving (each checkpoint is a constant driver with its own steering)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.game.channel import free_udp_port
from agent.game.telemetry import read_last_telemetry
from tests.helpers.checkpoints import (
    BAD_KINDS,
    LINE,
    publish_driver,
    write_every_bad_kind,
    write_slowly,
)
from tests.helpers.drives import Drive, drive_command
from tests.test_drive import start_game, stop_game


def steering_becomes(telemetry: Path, value: float, timeout: float) -> None:
    """Wait until the game applies `value` as the gamepad's steering (the model's output)."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        last = read_last_telemetry(telemetry) or {}
        if last.get("source") == "gamepad" and last.get("steering") == pytest.approx(
            value, abs=0.02
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"steering never became {value}: last telemetry {last}")


def test_checkpoints_published_while_driving_swap_in_and_bad_ones_are_refused(
    x_display: str, tmp_path: Path
) -> None:
    port = free_udp_port()
    telemetry = tmp_path / "telemetry.jsonl"
    game = start_game(port, telemetry, tmp_path)
    store = tmp_path / "models"
    marker = tmp_path / "lambda-ran"
    publish_driver(store, 0.3, 0.0)  # v0001: drives from the start
    drive = Drive(
        drive_command(
            store, port, "--json", "--set", "swap.poll_seconds=0.2",
            # A constant driver may well stand still; this test is about swapping.
            "--set", "unstuck.enabled=false",
        ),
        tmp_path,
    )  # fmt: skip
    try:
        drive.wait_for_log("following")
        steering_becomes(telemetry, 0.0, timeout=60)
        kinds = write_every_bad_kind(store, 2, tmp_path / "scratch", marker)
        deadline = time.monotonic() + 60
        while drive.stderr.count("rejected checkpoint") < len(kinds):
            assert time.monotonic() < deadline, drive.stderr[-3000:]
            time.sleep(0.1)
        steering_becomes(telemetry, 0.0, timeout=5)  # still v0001 after every refusal
        publish_driver(store, 0.3, 0.5)  # v0010, published atomically
        steering_becomes(telemetry, 0.5, timeout=30)
        # v0011 copied in slowly, the way a shared folder fills: never loaded half written.
        source = publish_driver(tmp_path / "elsewhere", 0.3, -0.5)
        writer = threading.Thread(target=write_slowly, args=(source, store / LINE / "v0011"))
        writer.start()
        while writer.is_alive():
            applied = (read_last_telemetry(telemetry) or {}).get("steering")
            assert applied == pytest.approx(0.5, abs=0.02), "swapped before the copy was whole"
            time.sleep(0.05)
        writer.join()
        steering_becomes(telemetry, -0.5, timeout=30)
        drive.signal("SIGTERM")
        assert drive.finish() == 143, drive.stderr[-3000:]
    finally:
        if drive.process.poll() is None:
            drive.process.kill()
        stop_game(game)
    summary = drive.summary()
    assert [swap["version"] for swap in summary["swaps"]] == ["v0010", "v0011"]
    assert summary["started_with"].startswith(f"{LINE}/v0001")
    assert summary["model"].startswith(f"{LINE}/v0011")
    refused = Counter(r["version"] for r in summary["rejections"])
    for version, kind in kinds.items():
        assert refused[version] == 1, (kind, summary["rejections"])
    reasons = {r["version"]: r["reason"] for r in summary["rejections"]}
    for version, kind in kinds.items():
        assert BAD_KINDS[kind].lower() in reasons[version].lower(), (kind, reasons[version])
    assert set(refused) - set(kinds) <= {"v0011"}  # at most the copy seen half written
    assert summary["nonfinite_predictions"] == 0
    assert summary["predictions"] > 100 and "Traceback" not in drive.stderr
    assert not marker.exists(), "code from a checkpoint folder ran"
    gaps = summary["command_gaps"]
    assert gaps["during_swaps"] > 0 and gaps["largest_during_ms"] is not None
