"""Stopping children (agent/runtime/processes.py): real processes, each told apart by how it
answers a signal."""

from __future__ import annotations

import signal
import subprocess
import sys

from agent.runtime.processes import stop_processes

_CHILD = """
import signal, sys
how = sys.argv[1]
# Explicitly: a shell's background job (CI, nohup ... &) starts with SIGINT ignored, and Python
# then installs no KeyboardInterrupt handler of its own.
signal.signal(signal.SIGINT, signal.default_int_handler)
if how == "ignores":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
try:  # "ready" inside: a signal right after it must still land in this try
    print("ready", flush=True)
    signal.pause()  # until a signal it does not ignore
except KeyboardInterrupt:
    sys.exit(7)
"""


def child(how: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, how], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_every_child_gets_the_signal_and_those_that_ignore_it_are_killed() -> None:
    obeys, ignores = child("obeys"), child("ignores")
    assert stop_processes([obeys, None, ignores], timeout=1.0) == [ignores]
    assert obeys.returncode == -signal.SIGTERM
    assert ignores.returncode == -signal.SIGKILL


def test_the_signal_can_be_sigint_or_none() -> None:
    interrupted = child("obeys")
    assert stop_processes([interrupted], timeout=10.0, stop_signal=signal.SIGINT) == []
    assert interrupted.returncode == 7  # its KeyboardInterrupt handler ran
    waited = child("obeys")
    assert stop_processes([waited], timeout=0.3, stop_signal=None) == [waited]
    assert waited.returncode == -signal.SIGKILL  # nothing was sent: it ran until the kill


def test_children_that_already_ended_are_left_alone() -> None:
    ended = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    ended.wait()
    assert stop_processes([ended], timeout=1.0) == []
    assert ended.returncode == 3
