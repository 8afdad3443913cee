"""SIGTERM and SIGINT as a normal way out: a callback instead of an exception mid-statement."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, SIGTERM/SIGINT call `callback(signal name)`; restored after.

    Python delivers signals to the main thread only; entered on another thread (an embedding
    caller), this does nothing and the caller handles signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        callback(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
