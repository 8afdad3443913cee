"""Thread priorities: helper threads (checkpoint loads, video) yield the CPU to the drive loop."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_this_threads_priority(nice: int) -> None:
    """Make the calling thread yield the CPU to normal threads (Linux: per-thread niceness;
    elsewhere a no-op)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as error:
        log.debug("could not lower the priority of %s: %s", threading.current_thread().name, error)
