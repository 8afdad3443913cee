"""A controller that drives nothing: it logs and remembers (dry runs, tests)."""

from __future__ import annotations

import logging

from agent.controllers.base import DeviceController
from agent.controllers.deadman import DEFAULT_HOLD
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.types import NEUTRAL, ControllerState

logger = logging.getLogger(__name__)


class NullController(DeviceController):
    """Logs each state at debug level; `last` is the newest state written (clamped)."""

    name = "null"

    def __init__(self, hold: float = DEFAULT_HOLD, clock: Clock = SYSTEM_CLOCK) -> None:
        self.last: ControllerState = NEUTRAL
        self.writes = 0
        """States written so far, neutral ones included."""
        super().__init__(hold, clock)

    def _write(self, state: ControllerState, tag: int) -> None:
        logger.debug("null controller: %s", state)
        self.last = state
        self.writes += 1
