"""`charles collect --workers N`: real collector processes (offscreen) writing into one data
folder; stopped by a signal they leave only complete shards and no process behind; a worker
that dies is reported and started again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.learn.shard_format import is_shard_name, read_shard
from agent.nets.registry import get_line
from tests.helpers.charles import REPO

CONFIG = ["--config", str(REPO / "config.toml")]
SHAPE = get_line("pilotnet_small").input_shape


def start_fleet(folder: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "collect", *CONFIG, "--render", "offscreen",
         "--data", str(folder / "data"), "--set", "data.samples_per_shard=50", *flags],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def worker_pids(stderr_text: str) -> list[int]:
    found = re.search(r"collecting with \d+ workers \(pids ([\d, ]+)\)", stderr_text)
    assert found, stderr_text[-2000:]
    return [int(pid) for pid in found.group(1).split(", ")]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def shards_by_pid(data: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for path in data.iterdir():
        if is_shard_name(path.name):
            found.setdefault(int(path.name.split("-")[-3]), []).append(path)
    return found


def wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Standard error up to the first line matching `pattern`."""
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
        assert time.monotonic() < deadline, "".join(seen)[-2000:]
    raise AssertionError(f"ended before {pattern!r}: {''.join(seen)[-2000:]}")


def test_two_workers_write_shards_and_sigterm_leaves_only_whole_ones(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, "--workers", "2", "--seconds", "120")
    try:
        head = wait_for_line(fleet, r"2 workers: w0 [1-9]\d*/s w1 [1-9]\d*/s", 120)
        pids = worker_pids(head)
        fleet.send_signal(signal.SIGTERM)
        out, err = fleet.communicate(timeout=90)
    finally:
        if fleet.poll() is None:
            fleet.kill()
    assert fleet.returncode == 143, err[-2000:]
    assert "stopped by: SIGTERM" in out, out
    data = tmp_path / "data"
    by_pid = shards_by_pid(data)
    assert sorted(by_pid) == sorted(pids)  # both workers wrote shards
    for paths in by_pid.values():
        for path in paths:
            assert len(read_shard(path, SHAPE)) > 0  # every shard whole
    leftovers = [p.name for p in data.iterdir()
                 if not is_shard_name(p.name) and not p.name.startswith("histogram-")]  # fmt: skip
    assert leftovers == []  # no temporary file, no half shard
    assert not any(alive(pid) for pid in pids)
    kept = int(re.search(r"kept (\d+) in", out).group(1))  # type: ignore[union-attr]
    assert kept == sum(len(read_shard(p, SHAPE)) for ps in by_pid.values() for p in ps)


def test_a_worker_that_dies_is_reported_and_started_again(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, "--workers", "2", "--seconds", "120")
    try:
        head = wait_for_line(fleet, r"2 workers: w0 [1-9]\d*/s", 120)
        first, second = worker_pids(head)
        os.kill(second, signal.SIGKILL)
        wait_for_line(fleet, rf"collector worker 1 \(pid {second}\) ended with status -9; "
                      "starting it again", 30)  # fmt: skip
        wait_for_line(fleet, r"2 workers: w0 [1-9]\d*/s w1 [1-9]\d*/s", 60)  # it collects again
        fleet.send_signal(signal.SIGTERM)
        out, _ = fleet.communicate(timeout=90)
    finally:
        if fleet.poll() is None:
            fleet.kill()
    assert alive(first) is False
    assert "track seeds: " in out and "110000" in out  # the restarted worker drove new tracks


def test_killing_the_fleet_leaves_no_worker_behind(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, "--workers", "2", "--seconds", "120")
    try:
        pids = worker_pids(wait_for_line(fleet, r"collecting with 2 workers", 60))
        fleet.send_signal(signal.SIGKILL)
        fleet.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "workers outlived their fleet"
            time.sleep(0.2)
    finally:
        if fleet.poll() is None:
            fleet.kill()
