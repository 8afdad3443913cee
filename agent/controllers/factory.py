"""Config -> controller backend."""

from __future__ import annotations

from collections.abc import Callable

from agent.config import ControllerConfig
from agent.controllers.base import Controller

BACKENDS = ("game", "keyboard", "vjoy", "vgamepad", "null")


def open_controller(
    config: ControllerConfig, channel_port: int, has_focus: Callable[[], bool]
) -> Controller:
    """The backend `config.backend` names, connected and neutral.

    `channel_port` is the bundled game's pad port (backend "game"); `has_focus` tells the
    keyboard backend whether the game window has keyboard focus. Every backend lets go by itself
    when a command is older than `config.hold` seconds. Raises DependencyError (one
    line with the fix) when the backend's package or driver is missing.
    """
    # Imports per branch: each backend pulls in its own (possibly Windows-only) driver.
    backend = config.backend
    controller: Controller
    if backend == "game":
        from agent.controllers.game import GameController

        controller = GameController(channel_port, hold=config.hold)
    elif backend == "keyboard":
        from agent.controllers.keyboard import KeyboardController

        controller = KeyboardController(config.keyboard, has_focus, hold=config.hold)
    elif backend == "vjoy":
        from agent.controllers.vjoy import VJoyController

        controller = VJoyController(config.vjoy_device, hold=config.hold)
    elif backend == "vgamepad":
        from agent.controllers.vgamepad import VGamepadController

        controller = VGamepadController(hold=config.hold)
    elif backend == "null":
        from agent.controllers.null import NullController

        controller = NullController(hold=config.hold)
    else:  # config validation lists the same names; reaching this is a bug
        raise ValueError(f"unknown controller backend {backend!r}; expected one of {BACKENDS}")
    controller.neutral()
    return controller
