"""A CPU budget for one background thread: work a slice, then sleep, so it takes only a share.

Niceness alone does not keep a checkpoint load from slowing the drive loop on a 2-core machine:
TensorFlow's own threads are not always busy, so a niced thread still runs, and while it runs it
takes CPU and memory bandwidth from the next prediction (measured on model_0005: commands came
up to 1.7 x further apart during a load). Spreading the same work thinly (a few milliseconds of
work, then a pause) leaves each prediction overlapping only a little of it.

The budget is enforced through a profile hook (`sys.setprofile`, which only ever affects the
thread that sets it): every Python or C function call and return of the thread checks the CPU
time the thread has used since its last pause. Long single C calls (one h5py read, one array
copy) are not cut, so the pauses come between them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SLICE_SECONDS = 0.005
"""CPU time the thread may work before it pauses."""


class DutyCycle:
    """Keeps the calling thread's CPU use to `share` of its wall time while active."""

    def __init__(self, share: float) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.share = share
        self.worked = 0.0
        """CPU seconds the thread used while limited."""
        self.slept = 0.0
        """Seconds it paused."""
        self._since = 0.0

    @contextmanager
    def limiting(self) -> Iterator[DutyCycle]:
        """Within this block the calling thread keeps to its share (no limit for share 1)."""
        if self.share >= 1.0:
            yield self
            return
        previous = sys.getprofile()
        self._since = time.thread_time()
        sys.setprofile(self._hook)
        try:
            yield self
        finally:
            sys.setprofile(previous)
            self.worked += time.thread_time() - self._since

    def _hook(self, _frame: FrameType, _event: str, _arg: Any) -> None:
        used = time.thread_time() - self._since
        if used < SLICE_SECONDS:
            return
        pause = used * (1.0 - self.share) / self.share
        self.worked += used
        started = time.monotonic()
        time.sleep(pause)
        self.slept += time.monotonic() - started
        self._since = time.thread_time()
