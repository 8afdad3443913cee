"""The newest-value slot for coroutines on one event loop (agent.runtime.slot's twin there).

Each viewer of the live view sends the newest value when it is ready for one: a viewer that
reads slowly skips values instead of queueing them, so it costs one value of memory however
far behind it falls, and never holds up the viewers beside it. Only the event loop's thread
uses a `NewestValue`; other threads hand values to it with `loop.call_soon_threadsafe(put)`.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class NewestValue(Generic[T]):
    """Holds the newest value put into it; `close` ends every wait (the server is stopping)."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._seq = 0
        self._closed = False
        self._changed = asyncio.Event()

    def put(self, value: T) -> int:
        """Replace the value; returns its sequence number (1, 2, ...)."""
        self._value = value
        self._seq += 1
        self._wake()
        return self._seq

    def get(self) -> tuple[T | None, int]:
        """The newest value and its sequence number; (None, 0) before the first put."""
        return self._value, self._seq

    async def wait_newer(self, seq: int) -> tuple[T, int] | None:
        """The newest value once one newer than `seq` has been put; None once closed."""
        while self._seq <= seq and not self._closed:
            await self._changed.wait()
        if self._closed or self._value is None:
            return None
        return self._value, self._seq

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        # A fresh event per change: waiters of the old one all wake, later waiters wait anew.
        self._changed.set()
        self._changed = asyncio.Event()
