"""The game's input sources and which one drives: keyboard, then gamepad, then autopilot.

A player at the keyboard always wins (a human taking over), then the virtual gamepad (the
agent), then the built-in autopilot when it is switched on; with none of them the car coasts.
"""

from __future__ import annotations

from collections.abc import Sequence

import pygame

from agent.types import NEUTRAL, ControllerState

ACCELERATE_KEYS = (pygame.K_UP, pygame.K_w)
BRAKE_KEYS = (pygame.K_DOWN, pygame.K_s)
LEFT_KEYS = (pygame.K_LEFT, pygame.K_a)
RIGHT_KEYS = (pygame.K_RIGHT, pygame.K_d)
DRIVING_KEYS = ACCELERATE_KEYS + BRAKE_KEYS + LEFT_KEYS + RIGHT_KEYS


def keyboard_state(pressed: Sequence[bool]) -> ControllerState | None:
    """Full-value controls from the held keys (`pygame.key.get_pressed()`); None when none held.

    Left and right held together cancel out; accelerate and brake held together both apply, like
    two pedals pressed at once.
    """
    if not any(pressed[key] for key in DRIVING_KEYS):
        return None
    left = any(pressed[key] for key in LEFT_KEYS)
    right = any(pressed[key] for key in RIGHT_KEYS)
    return ControllerState(
        steering=float(right) - float(left),
        accelerate=float(any(pressed[key] for key in ACCELERATE_KEYS)),
        brake=float(any(pressed[key] for key in BRAKE_KEYS)),
    )


def choose_input(
    keyboard: ControllerState | None,
    gamepad: ControllerState,
    autopilot: ControllerState | None,
) -> tuple[ControllerState, str]:
    """The input that drives this tick and its source name for telemetry.

    `gamepad` is what the receiver polled (neutral when silent); a neutral pad counts as idle,
    so an agent that has stopped sending hands the car back to the autopilot.
    """
    if keyboard is not None:
        return keyboard, "keyboard"
    if gamepad != NEUTRAL:
        return gamepad, "gamepad"
    if autopilot is not None:
        return autopilot, "autopilot"
    return NEUTRAL, "none"
