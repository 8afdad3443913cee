"""`charles drive` keeps the bundled game it started: kill -9 of the game mid-drive, end to end.

The real CLI in its own process starts its own Xvfb and game; the test kills the game's process
with SIGKILL and judges from the outside: a new game process, the gamepad driving it again
(its telemetry), the drive still running, and the summary's count.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from agent.game.channel import free_udp_port
from tests.helpers.drives import (
    EXIT_STATUS,
    Drive,
    children_of,
    drive_command,
    publish_constant_driver,
    running,
    wait_until,
    without_display,
)

RESTARTED_WITHIN = 10.0
"""Seconds from the kill to the gamepad driving the new game (the issue's promise)."""


def games_of(drive: Drive) -> dict[int, list[str]]:
    """The drive's running bundled games: pid -> command line."""
    games = {}
    for pid in children_of(drive.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "agent.game" in argv and running(pid):
            games[pid] = argv
    return games


def samples(telemetry: Path) -> list[dict]:
    return [json.loads(line) for line in telemetry.read_text().splitlines() if line.endswith("}")]


def driven(telemetry: Path, since: int) -> bool:
    """Did the gamepad drive the game in any telemetry sample from line `since` on?"""
    return any(sample["source"] == "gamepad" for sample in samples(telemetry)[since:])


def test_a_killed_game_is_started_again_and_driven_within_10_s(tmp_path: Path) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.6, steering=0.0)
    drive = Drive(drive_command(store, free_udp_port(), "--json"), tmp_path, without_display())
    try:
        drive.wait_for_log("driving 'Charles CarRacing'")
        [(first, argv)] = games_of(drive).items()
        telemetry = Path(argv[argv.index("--telemetry") + 1])
        wait_until(lambda: driven(telemetry, 0), 30, "the gamepad to drive the first game")

        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        since = len(samples(telemetry))  # the killed game writes no more
        wait_until(lambda: first not in games_of(drive) and games_of(drive), 10, "a new game")
        [(second, second_argv)] = games_of(drive).items()
        assert second != first and second_argv == argv  # the same game: port, size, files
        wait_until(lambda: driven(telemetry, since), RESTARTED_WITHIN, "driving the new game")
        print(f"kill -9 to driving the new game: {time.monotonic() - killed_at:.2f} s")
        assert drive.process.poll() is None, "the drive must go on"
        assert "the bundled game ended (killed by SIGKILL" in drive.stderr
    finally:
        if drive.process.poll() is None:
            drive.signal("SIGTERM")
        status = drive.finish()
    assert status == EXIT_STATUS["SIGTERM"], drive.stderr[-3000:]
    assert "Traceback" not in drive.stderr, drive.stderr[-3000:]
    summary = drive.summary()
    assert summary["stopped_by"] == "SIGTERM"
    assert summary["game_restarts"] == 1
