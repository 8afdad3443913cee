"""SIGTERM and SIGINT as a normal way out, during start-up as well as while driving.

While driving, a signal only records why the session ends and wakes whoever waits for it: no
exception lands in the middle of a statement that is sending input. While starting up (waiting
for the game window, loading a model for seconds), nothing is being driven yet, so the first
signal unwinds the start-up at once with `StopRequested` instead of being noticed only after it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}
"""Conventional exit status after a stop signal (128 + its number)."""


class StopRequested(BaseException):
    """A stop signal arrived during start-up. A BaseException, like KeyboardInterrupt, so that
    library code catching `Exception` cannot swallow it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stop:
    """Why the session ends; the first reason wins. Call it with a reason to stop."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.event = threading.Event()
        self._interrupting = False

    def __call__(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def on_signal(self, name: str) -> None:
        """The signal handler's part: record, and during start-up raise once."""
        self(name)
        if self._interrupting:
            self._interrupting = False  # a second signal must not interrupt the unwinding
            raise StopRequested(self.reason or name)

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """While the block runs (start-up), a stop signal raises StopRequested in it."""
        self.raise_if_requested()
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    def raise_if_requested(self) -> None:
        """StopRequested if a stop came (e.g. from another thread) while starting up."""
        if self.requested:
            raise StopRequested(self.reason or "stop")


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
