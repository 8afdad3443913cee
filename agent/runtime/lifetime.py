"""Child processes that die with the process that started them, even after `kill -9`.

Charles starts helpers (the bundled game, Xvfb) that must never outlive it: an orphaned game
keeps a window and a gamepad port, and the next `charles drive` would find it. On Linux the
kernel's parent-death signal does this (`prctl(PR_SET_PDEATHSIG)`), also when the parent is
killed with SIGKILL and cannot clean up. The signal is tied to the thread that started the
child, so children are started from the main thread.

- Our own Python children call `die_with_parent(parent_pid)` first thing.
- Foreign programs (Xvfb) are started through `tied_to_this_process(command)`, a tiny Python
  wrapper that sets the signal and then `exec`s the program (the setting survives `exec`).

Elsewhere (Windows, macOS) `die_with_parent` does nothing; the bundled game also watches a
lifeline pipe from its parent (see `agent.game.host`), which works everywhere.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux only).

    Returns False when the parent is already gone (this process was re-parented before the
    request took effect): the caller should exit. Returns True otherwise, and on systems
    without the feature.
    """
    if not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # Checked after the request: a parent that died before it would never send the signal.
    return os.getppid() == parent_pid


def tied_to_this_process(command: list[str]) -> list[str]:
    """`command` started so that it dies (SIGTERM) when this process exits, however it exits."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-m", "agent.runtime.lifetime", str(os.getpid()), *command]


def _exec_tied(argv: list[str]) -> None:
    parent, *command = argv
    if not command:
        raise SystemExit("usage: python -m agent.runtime.lifetime PARENT_PID PROGRAM [ARGS...]")
    if not die_with_parent(int(parent)):
        raise SystemExit(f"parent {parent} exited before {command[0]} started")
    os.execvp(command[0], command)


if __name__ == "__main__":
    _exec_tied(sys.argv[1:])
