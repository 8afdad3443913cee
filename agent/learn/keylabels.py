"""Labels from a person's keys, for games other than the bundled one.

A pynput listener follows the driving keys of [controller.keyboard]; the label of a grab is
the keys held at that moment, as full-value controls (the same mapping the bundled game uses
for its own keys). Keys count only while the game window has focus, so typing elsewhere never
becomes a label.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.capture.screen import explain_display_loss
from agent.config import KeyboardConfig
from agent.drive.hotkeys import key_name, start_key_listener, stop_key_listener
from agent.errors import log_failure
from agent.types import ControllerState

log = logging.getLogger(__name__)


class KeyLabels:
    """Which driving keys are held now."""

    def __init__(self, keys: KeyboardConfig, has_focus: Callable[[], bool]) -> None:
        self._names = {
            keys.accelerate.lower(): "accelerate",
            keys.brake.lower(): "brake",
            keys.left.lower(): "left",
            keys.right.lower(): "right",
        }
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._has_focus = has_focus
        self._listening = True
        self._listener = start_key_listener(self._press, self._release, self._listener_died)

    def __enter__(self) -> KeyLabels:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _listener_died(self, error: Exception) -> None:
        # Which keys are held is unknown from now on: no frame gets a label.
        self._listening = False
        log_failure(log, "the driving keys can no longer be followed", explain_display_loss(error))

    def _press(self, key: Any) -> None:
        name = self._names.get(key_name(key) or "")
        if name is not None:
            with self._lock:
                self._held.add(name)

    def _release(self, key: Any) -> None:
        name = self._names.get(key_name(key) or "")
        if name is not None:
            with self._lock:
                self._held.discard(name)

    def state(self) -> ControllerState | None:
        """The held keys as controls; None while the game window lacks focus (the person is
        not driving then, so the frame gets no label), and once the listener died."""
        if not self._listening or not self._has_focus():
            return None
        with self._lock:
            held = set(self._held)
        return ControllerState(
            steering=float("right" in held) - float("left" in held),
            accelerate=float("accelerate" in held),
            brake=float("brake" in held),
        )

    def stop(self) -> None:
        stop_key_listener(self._listener)
