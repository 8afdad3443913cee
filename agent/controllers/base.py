"""The interface every controller backend follows, and what device backends share.

Device backends (the bundled game's pad, vJoy, XInput, null) write a whole state in one call;
they share one lock and one dead-man thread here. The keyboard backend pulses keys on its own
thread and applies the same dead-man rule there.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import ClassVar

from agent.controllers.deadman import DEFAULT_HOLD, DeadMan
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.types import NEUTRAL, ControllerState, clamp_state

logger = logging.getLogger(__name__)


class Controller(ABC):
    """A virtual controller the agent drives the game with.

    Contract:
    - `set(state, tag)` sends the newest state; it returns quickly (no waiting on the game).
      `tag` names the captured frame the state was computed from (its capture sequence number;
      0: none). Backends that cannot carry it ignore it; the bundled game's pad carries it, so
      the game can say when its physics first applied the command (`agent.drive.latency`).
    - A state stays applied for at most `hold` seconds without a newer `set()`: then the
      backend's own thread goes neutral (the dead-man, `agent.controllers.deadman`).
    - `neutral()` centres the stick and releases the pedals/keys. It is idempotent, safe from
      any thread (including a signal handler interrupting `set`) and after errors: it never
      raises, it logs a driver failure instead, because it is what runs in `finally` blocks.
    - `close()` goes neutral first, then frees the driver; idempotent. After `close()`, `set`
      is ignored, so a closed controller stays neutral.
    """

    name: ClassVar[str]
    _deadman: DeadMan
    """Set by every backend: its dead-man (see `agent.controllers.deadman`)."""

    @abstractmethod
    def set(self, state: ControllerState, tag: int = 0) -> None: ...

    @abstractmethod
    def neutral(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    def releases(self) -> int:
        """How many times the dead-man made the controls neutral because no command came."""
        return self._deadman.releases

    @property
    def hold(self) -> float:
        """Seconds a command stays applied without a newer one (config `controller.hold`)."""
        return self._deadman.hold

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

    Subclasses implement `_write(state, tag)` (state already clamped; tag 0 with neutral; a
    device with no room for a tag ignores it) and `_release()` (free the device). One
    re-entrant lock serialises all device access, so `neutral()` from a signal handler that
    interrupted `set()` on the same thread cannot deadlock, and a `set()` that is half way
    through its writes finishes before `close()` writes neutral.

    A watcher thread enforces the dead-man and, for devices that forget a state unless it is
    sent again (`repeat_every` seconds; the bundled game reads a silent pad as neutral),
    re-sends the applied state, with its tag, until it expires. It reads the time from, and
    waits on, `clock`.
    """

    repeat_every: ClassVar[float | None] = None

    def __init__(self, hold: float = DEFAULT_HOLD, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False
        self._deadman = DeadMan(hold, self.name)
        self._applied = NEUTRAL
        self._applied_tag = 0
        self._written_at = clock.now()
        self._changed = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, name=f"{self.name}-deadman", daemon=True
        )
        self._watcher.start()

    @property
    def closed(self) -> bool:
        return self._closed

    @abstractmethod
    def _write(self, state: ControllerState, tag: int) -> None: ...

    def _release(self) -> None:
        """Free the device after the final neutral; called once."""

    def set(self, state: ControllerState, tag: int = 0) -> None:
        with self._lock:
            if self._closed:
                return
            self._apply(clamp_state(state), tag)
        self._changed.set()

    def neutral(self) -> None:
        with self._lock:
            if self._closed:
                return  # close() already went neutral and the device may be gone
            try:
                self._apply(NEUTRAL, 0)
            except Exception:
                logger.exception("%s controller failed to go neutral", self.name)
        self._changed.set()

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
        self._changed.set()

    def _apply(self, state: ControllerState, tag: int) -> None:
        """Write `state` and (re)start its hold; lock held."""
        self._write(state, tag)
        now = self._clock.now()
        self._applied, self._applied_tag = state, tag
        self._written_at = now
        if state == NEUTRAL:
            self._deadman.disarm()
        else:
            self._deadman.arm(now)

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                try:
                    timeout = self._enforce(self._clock.now())
                except Exception:  # a driver failure; set() reports it to the loop
                    logger.exception("%s controller's dead-man could not write", self.name)
                    timeout = self._deadman.hold
            self._clock.wait(self._changed, timeout)
            self._changed.clear()

    def _enforce(self, now: float) -> float | None:
        """Expire or repeat the applied state; seconds until there is more to do (None: idle)."""
        left = self._deadman.seconds_left(now)
        if left is None:
            return None
        if left <= 0.0:
            self._apply(NEUTRAL, 0)
            self._deadman.release()
            return None
        if self.repeat_every is None:
            return left
        since_write = now - self._written_at
        if since_write >= self.repeat_every:
            self._write(self._applied, self._applied_tag)
            self._written_at, since_write = now, 0.0
        return min(left, self.repeat_every - since_write)
