"""Driving a game that is not the bundled one: a GTA V user loads none of the bundled game's
libraries (pygame, Gymnasium, Box2D). A real drive of another program's window on Xvfb, with
Python's own record of every module it imported (`-X importtime`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from agent.game.channel import free_udp_port
from tests.helpers.drives import drive_command, publish_constant_driver
from tests.helpers.xvfb import WindowProgram, display_env

TITLE = "Some Other Racing Game"
BUNDLED_GAME_LIBRARIES = ("pygame", "gymnasium", "Box2D")


def imported_modules(importtime_log: str) -> set[str]:
    """Every module named in `python -X importtime`'s report (one line per import)."""
    modules = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return modules


def test_driving_another_games_window_loads_none_of_the_bundled_games_libraries(
    x_display: str, tmp_path: Path
) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    command = drive_command(
        store, free_udp_port(), "--backend", "null", "--seconds", "1", "--json",
        "--set", f"game.title={json.dumps(TITLE)}",
    )  # fmt: skip
    command[1:1] = ["-X", "importtime"]
    with WindowProgram(x_display, TITLE, (0, 0, 640, 360)):
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=tmp_path, timeout=120,
            env=display_env(x_display),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["window"] == TITLE
    modules = imported_modules(result.stderr)
    assert {
        "agent.session",
        "agent.drive.target",
        "agent.game.launcher",
    } <= modules  # a real report
    loaded = sorted(name for name in modules if name.split(".")[0] in BUNDLED_GAME_LIBRARIES)
    assert loaded == [], f"driving {TITLE!r} imported the bundled game's libraries: {loaded}"
