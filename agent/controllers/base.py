"""The interface every controller backend follows, and the locking shared by device backends."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import ClassVar

from agent.types import NEUTRAL, ControllerState, clamp_state

logger = logging.getLogger(__name__)


class Controller(ABC):
    """A virtual controller the agent drives the game with.

    Contract:
    - `set(state)` sends the newest state; it returns quickly (no waiting on the game).
    - `neutral()` centres the stick and releases the pedals/keys. It is idempotent, safe from
      any thread (including a signal handler interrupting `set`) and after errors: it never
      raises, it logs a driver failure instead, because it is what runs in `finally` blocks.
    - `close()` goes neutral first, then frees the driver; idempotent. After `close()`, `set`
      is ignored, so a closed controller stays neutral.
    """

    name: ClassVar[str]

    @abstractmethod
    def set(self, state: ControllerState) -> None: ...

    @abstractmethod
    def neutral(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Controller:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class DeviceController(Controller):
    """A backend that writes a whole state to a device in one call (game pad, vJoy, XInput).

    Subclasses implement `_write(state)` (state already clamped) and `_release()` (free the
    device). One re-entrant lock serialises all device access, so `neutral()` from a signal
    handler that interrupted `set()` on the same thread cannot deadlock.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @abstractmethod
    def _write(self, state: ControllerState) -> None: ...

    def _release(self) -> None:
        """Free the device after the final neutral; called once."""

    def set(self, state: ControllerState) -> None:
        with self._lock:
            if self._closed:
                logger.debug("%s controller is closed; ignoring %s", self.name, state)
                return
            self._write(clamp_state(state))

    def neutral(self) -> None:
        with self._lock:
            if self._closed:
                return  # close() already went neutral and the device may be gone
            try:
                self._write(NEUTRAL)
            except Exception:
                logger.exception("%s controller failed to go neutral", self.name)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.neutral()
            self._closed = True
            try:
                self._release()
            except Exception:
                logger.exception("%s controller failed to close its device", self.name)
