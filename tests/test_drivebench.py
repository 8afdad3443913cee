"""`charles bench drive` on a machine with no screen: it starts Xvfb and the bundled game itself
and measures the raw model, the drive loop and the naive loop in one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.drives import free_udp_port


def test_bench_drive_json_reports_raw_drive_and_naive_on_the_bundled_game(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "bench", "drive", "--json", "--config",
         str(REPO / "config.toml"), "--seconds", "6", "--raw-seconds", "1",
         "--naive-seconds", "2", "--set", f"game.channel_port={free_udp_port()}",
         "--store", str(tmp_path / "models")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    raw, drive, naive = report["raw"], report["drive"], report["naive"]
    assert report["line"] == "pilotnet_small" and report["backend"] == "tensorflow"
    assert report["model"].startswith("pilotnet_small/v")  # the shipped reference checkpoint
    # pilotnet_small is far faster than the game: the loop predicts on each new frame only.
    assert raw["pps"] > drive["pps"] > 0 and raw["predictions"] > 50
    assert report["pps_ratio"] == round(drive["pps"] / raw["pps"], 3)
    assert report["pps_goal"] == round(0.95 * min(raw["pps"], drive["fps"]), 2)
    assert report["pps_goal_met"] == (drive["pps"] >= report["pps_goal"])
    assert report["latency_goal_ms"] == round(raw["p50_ms"] + 5, 2)
    assert report["latency_goal_met"] == (drive["latency_p50_ms"] <= report["latency_goal_ms"])
    assert 0 < raw["p50_ms"] <= raw["p95_ms"] <= raw["p99_ms"]
    assert drive["latency_p50_ms"] <= drive["latency_p95_ms"] <= drive["latency_p99_ms"]
    assert drive["capture_p50_ms"] > 0 and drive["preprocess_p50_ms"] > 0
    shown = drive["render_to_command_ms"]
    assert shown["pictures"] == "stamped" and shown["matched"] > 10
    # The naive loop really ran: grab, resize, model.predict and send, each time.
    assert naive["predictions"] > 0 and naive["p50_ms"] > raw["p50_ms"]
