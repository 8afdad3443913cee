"""The trainer's loss curve in the stream layout (agent/record/losses.py), read from real
manifests in a model store: each version taken once, the curve bounded for a week-long drive."""

from __future__ import annotations

import json
from pathlib import Path

from agent.checkpoints.manifest import version_name
from agent.checkpoints.reference import REFERENCE_ROOT
from agent.record.losses import MAX_POINTS, POLL_SECONDS, LossCurve

TEMPLATE = json.loads((REFERENCE_ROOT / "pilotnet_small" / "manifest.json").read_text())


def publish(store: Path, numbers: range) -> None:
    """Manifests of versions `numbers` (batches 10 n, loss 1/n): all the curve reads."""
    for n in numbers:
        folder = store / "pilotnet_small" / version_name(n)
        folder.mkdir(parents=True)
        loss = {"throttle": 0.5 / n, "steering": 0.5 / n, "total": 1.0 / n}
        manifest = {**TEMPLATE, "version": version_name(n), "batches": 10 * n, "loss": loss}
        (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_curve_takes_each_version_once_and_keeps_what_the_store_prunes(tmp_path: Path) -> None:
    curve = LossCurve(tmp_path, "pilotnet_small")
    assert curve.points(now=0.0) == ()
    publish(tmp_path, range(1, 6))
    assert curve.points(now=1.0) == ()  # not polled again before POLL_SECONDS
    first = curve.points(now=POLL_SECONDS)
    assert first == tuple((10 * n, 1.0 / n) for n in range(1, 6))
    assert curve.points(now=2 * POLL_SECONDS) is first  # nothing new: the same curve, no copy
    for n in range(1, 4):  # the trainer's keep_versions prunes old versions
        for file in (tmp_path / "pilotnet_small" / version_name(n)).iterdir():
            file.unlink()
        (tmp_path / "pilotnet_small" / version_name(n)).rmdir()
    publish(tmp_path, range(6, 7))
    assert curve.points(now=3 * POLL_SECONDS) == tuple((10 * n, 1.0 / n) for n in range(1, 7))


def test_a_week_of_versions_stays_under_max_points_with_its_history(tmp_path: Path) -> None:
    curve = LossCurve(tmp_path, "pilotnet_small")
    total = 2 * MAX_POINTS + 50
    now = 0.0
    for start in range(1, total + 1, 100):  # the trainer publishes while the drive polls
        publish(tmp_path, range(start, min(start + 100, total + 1)))
        now += POLL_SECONDS
        points = curve.points(now=now)
        assert len(points) <= MAX_POINTS
    assert list(points) == sorted(points)
    assert points[0] == (10, 1.0)  # the start of training is still drawn
    newest = tuple((10 * n, 1.0 / n) for n in range(total - MAX_POINTS // 4, total + 1))
    assert points[-len(newest) :] == newest  # the recent past at full resolution
