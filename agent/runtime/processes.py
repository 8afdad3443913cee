"""Ending child processes (the bundled game, Xvfb, collectors, learners) politely, then firmly."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterable


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL; returns once it has exited."""
    stop_processes([process], timeout)


def stop_processes(
    processes: Iterable[subprocess.Popen | None],
    timeout: float,
    stop_signal: signal.Signals | None = signal.SIGTERM,
) -> list[subprocess.Popen]:
    """`stop_signal` to every one still running, all at once (None: send nothing, only wait),
    then up to `timeout` seconds in all for them to exit, then SIGKILL for those left.

    Returns once every one has exited: the list of those that had to be killed. Several
    children stop in the time of the slowest, not the sum of them all.
    """
    running = [p for p in processes if p is not None and p.poll() is None]
    if stop_signal is not None:
        for process in running:
            with contextlib.suppress(ProcessLookupError):  # it ended since poll()
                process.send_signal(stop_signal)
    deadline = time.monotonic() + timeout
    killed = []
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed.append(process)
    return killed
