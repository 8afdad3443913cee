"""Running `charles drive` as a user does, for the end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent.checkpoints.publish import publish
from tests.helpers.charles import REPO

LINE = "pilotnet_small"

EXIT_STATUS = {"SIGTERM": 143, "SIGINT": 130}
"""What `charles drive` exits with after each stop signal (128 + its number)."""


def publish_constant_driver(store: Path, throttle: float, steering: float) -> None:
    """A checkpoint that always predicts (throttle, steering), whatever it sees."""
    # Keras is imported here, not with this module: the game's tests use its other helpers
    # and need no TensorFlow.
    from tests.helpers.models import constant_driver

    model = constant_driver(throttle, steering, LINE)
    publish(model, store, LINE, batches=0, note=f"constant {throttle}, {steering}")


def drive_command(store: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "drive", "--config", str(REPO / "config.toml"),
        "--model", LINE, "--set", f"model.store={json.dumps(str(store))}",
        "--set", f"game.channel_port={port}", *extra,
    ]  # fmt: skip


class Drive:
    """`charles drive` in its own process; its output is read as it comes (for its log lines)."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
            env=env if env is not None else dict(os.environ),
        )  # fmt: skip
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.process.stdout, self._out),
                (self.process.stderr, self._err),
            )
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def wait_for_log(self, fragment: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while fragment not in self.stderr:
            assert self.process.poll() is None, f"exited before {fragment!r}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {fragment!r} in:\n{self.stderr[-3000:]}"
            time.sleep(0.05)

    def signal(self, name: str) -> None:
        self.process.send_signal(getattr(signal, name))

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the process to end (killing it after `timeout`); its exit status."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"charles drive did not end in {timeout} s:\n{self.stderr}"
            ) from None
        finally:
            for reader in self._readers:
                reader.join(5.0)
        return self.process.returncode

    def summary(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("charles: error:")]


def children_of(pid: int) -> list[int]:
    """Process ids of every descendant of `pid` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...; comm may contain spaces and parentheses.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                found.append(child)
                frontier.append(child)
    return found


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def without_display() -> dict[str, str]:
    """The environment of a user on a machine with no screen: Charles starts its own Xvfb."""
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
