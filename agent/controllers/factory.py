"""Config -> controller backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from agent.capture.window import GameWindow
from agent.config import ControllerBackend, ControllerConfig
from agent.controllers.base import Controller
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.liveness import Failures

BACKENDS: tuple[str, ...] = get_args(ControllerBackend)
"""controller.backend's words, from the config schema (the one place they are declared)."""
PROCESS_BACKENDS = ("keyboard", "vjoy", "vgamepad")
"""Backends that hold input in the OS (a key down, a pad's axis): they run in a controller
process of their own (`agent.controllers.host`)."""


def open_controller(
    config: ControllerConfig,
    channel_port: int,
    window: GameWindow | None,
    failures: Failures | None = None,
) -> Controller:
    """The backend `config.backend` names, connected and neutral, as `charles drive` uses it.

    Backends that hold input in the operating system (keys, vJoy, a virtual XInput pad) run in
    a controller process of their own (`agent.controllers.remote`), so they let go even when
    this process is frozen; the keyboard presses keys only while `window` (the game's) has the
    focus. The bundled game's pad (`game`) and `null` run here: the game itself lets go of a
    silent pad. Raises DependencyError (one line with the fix) when the backend's package or
    driver is missing.
    """
    if config.backend in PROCESS_BACKENDS:
        from agent.controllers.remote import ControllerProcess

        return ControllerProcess(config, window, failures=failures)
    has_focus = window.has_focus if window is not None else _never
    return build_controller(config, channel_port, has_focus)


def build_controller(
    config: ControllerConfig,
    channel_port: int,
    has_focus: Callable[[], bool],
    *,
    key_sender: Any = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Controller:
    """The backend `config.backend` names, in this process, connected and neutral.

    `channel_port` is the bundled game's pad port (backend "game"); `has_focus` tells the
    keyboard backend whether the game window has keyboard focus, and `key_sender` (X11) sends
    its keys to the game's window only. Every backend lets go by itself when a command is older
    than `config.hold` seconds on `clock`.
    """
    # Imports per branch: each backend pulls in its own (possibly Windows-only) driver.
    backend = config.backend
    controller: Controller
    if backend == "game":
        from agent.controllers.game import GameController

        controller = GameController(channel_port, hold=config.hold, clock=clock)
    elif backend == "keyboard":
        from agent.controllers.keyboard import KeyboardController

        controller = KeyboardController(
            config.keyboard, has_focus, hold=config.hold, sender=key_sender, clock=clock
        )
    elif backend == "vjoy":
        from agent.controllers.vjoy import VJoyController

        controller = VJoyController(config.vjoy_device, hold=config.hold, clock=clock)
    elif backend == "vgamepad":
        from agent.controllers.vgamepad import VGamepadController

        controller = VGamepadController(hold=config.hold, clock=clock)
    elif backend == "null":
        from agent.controllers.null import NullController

        controller = NullController(hold=config.hold, clock=clock)
    else:  # config validation lists the same names; reaching this is a bug
        raise ValueError(f"unknown controller backend {backend!r}; expected one of {BACKENDS}")
    controller.neutral()
    return controller


def _never() -> bool:
    return False
