"""Waiting for another thread to act: on the condition itself, never for a guessed time."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

POLL = 0.002
"""Real seconds between looks at the condition."""


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """True as soon as `condition()` is; False when it still is not after `timeout` real
    seconds (a bound for a broken part, not a time anything is expected to take)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def waiting_in(thread: threading.Thread, function: Callable[..., object]) -> bool:
    """True while `thread` runs `function` as its innermost Python call: for a thread blocked in
    a lock or a condition's wait, proof that it has got there (a C call shows no frame)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and frame.f_code is getattr(function, "__code__", None)
