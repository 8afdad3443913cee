"""Which window `charles drive` drives, identified with certainty before any input is sent.

- The bundled game (game.title is its title, no game.region): the window owned by the game
  process Charles started, or the one that answered on the gamepad port; any other window with
  a lookalike title is ignored.
- Another game: the window titled exactly game.title, or (game.match = "substring", which needs
  game.process) a window of the game's program whose title contains it; windows of several
  different titles that merely contain it are refused as ambiguous
  (`agent.capture.window.choose`). game.process, when set, always has to match too.
- A fixed game.region: captured as it is. The keyboard backend still needs the game's window to
  know when the game has focus, found by the same rules (the bundled game's title: its
  process's window); without it the keyboard backend refuses.
"""

from __future__ import annotations

import logging
import time

from agent.capture import GameWindow, WindowError, WindowQuery, find_window, fixed_region
from agent.capture.window import Owner
from agent.config import Config
from agent.game.launcher import BundledGame, GameStartError
from agent.game.options import WINDOW_TITLE as BUNDLED_GAME_TITLE
from agent.runtime.signals import Stop

log = logging.getLogger(__name__)

GAME_START_TIMEOUT = 60.0
"""Seconds to wait for the bundled game's window after starting it."""


def is_bundled_game(config: Config) -> bool:
    return config.game.title == BUNDLED_GAME_TITLE and not config.game.region


def window_query(config: Config, owner: Owner | None = None) -> WindowQuery:
    """The window config names: game.title under game.match and game.process."""
    game = config.game
    return WindowQuery(game.title, game.match, game.process, owner)


def acquire_window(config: Config, game: BundledGame | None, stop: Stop) -> GameWindow:
    """The window (or region) to capture and drive; waits for the bundled game's window."""
    if config.game.region:
        focus = _focus_window(config) if config.controller.backend == "keyboard" else None
        return fixed_region(*config.game.region, focus_window=focus)
    if game is None:
        return find_window(window_query(config))
    return _wait_for_game_window(game, stop)


def _focus_window(config: Config) -> GameWindow:
    owner = None
    if config.game.title == BUNDLED_GAME_TITLE:
        # The bundled game's title names the bundled game: its process's window, not a lookalike.
        owner = BundledGame(config.game.channel_port).pid
    try:
        return find_window(window_query(config, owner))
    except WindowError as error:
        raise WindowError(
            "with game.region, the keyboard backend still needs the game's window (found by "
            f"game.title) to press keys only while the game has focus, but {error}"
        ) from None


def _wait_for_game_window(game: BundledGame, stop: Stop) -> GameWindow:
    deadline = time.monotonic() + GAME_START_TIMEOUT
    log.info("waiting for the bundled game's window")
    while True:
        stop.raise_if_requested()
        if game.exited():
            raise GameStartError(f"the bundled game did not start: {game.last_words()}")
        try:
            return find_window(WindowQuery(BUNDLED_GAME_TITLE, owner=game.pid))
        except WindowError:
            if time.monotonic() > deadline:
                raise
            stop.event.wait(0.2)
