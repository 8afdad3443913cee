"""The bundled game's supervisor: when a game Charles started is started again, and when not.

The timing rules run on a fake clock; the games are real processes (a few lines of Python that
log and wait, or crash at start), killed with a real SIGKILL.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture.window import WindowError
from agent.game.launcher import BundledGame, GameLaunch
from agent.game.supervisor import (
    FIRST_DELAY,
    MAX_RESTARTS,
    RESTART_WINDOW,
    GameKeptDying,
    GameSupervisor,
    RestartPolicy,
)
from agent.runtime.liveness import Failures
from tests.helpers.clock import FakeClock
from tests.helpers.drives import running
from tests.helpers.waiting import wait_until

RUNS = "import time; print('game up', flush=True); time.sleep(600)"
"""A game that starts, says so in its log and runs until stopped."""
CRASHES = "import sys; sys.exit('RuntimeError: no display for the game')"
"""A game that dies on start-up every time, its last words on stderr."""


@pytest.fixture
def games(tmp_path: Path) -> Iterator[list[BundledGame]]:
    """Games a test started; each is stopped afterwards."""
    started: list[BundledGame] = []
    yield started
    for game in started:
        game.stop()


def start_game(games: list[BundledGame], folder: Path, script: str) -> BundledGame:
    game = BundledGame(0, launch=GameLaunch((sys.executable, "-c", script), folder))
    game.start()
    games.append(game)
    return game


def up(game: BundledGame) -> bool:
    """The game's process runs and has logged that it is up."""
    assert game.process is not None and game.log_path is not None
    return running(game.process.pid) and "game up" in game.log_path.read_text()


def test_a_killed_game_is_dropped_at_once_and_started_again_after_the_delay(
    games: list[BundledGame], tmp_path: Path
) -> None:
    game = start_game(games, tmp_path, RUNS)
    clock, failures, gone = FakeClock(), Failures(), []
    supervisor = GameSupervisor(game, gone.append, failures, clock=clock)
    first = game.process
    assert first is not None and wait_until(lambda: up(game), 30)
    supervisor.look()
    assert gone == [] and game.pid() == first.pid

    first.kill()
    first.wait()
    supervisor.look()
    # At once: the capture lets go of the ended game's window, so the loop goes neutral.
    assert gone == ["the bundled game ended (killed by SIGKILL; last logged: game up)"]
    with pytest.raises(WindowError, match="has ended"):
        game.pid()  # its window is no target while it is away
    clock.advance(FIRST_DELAY - 0.01)
    supervisor.look()
    assert game.process is first and supervisor.restarts == 0

    clock.advance(0.01)
    supervisor.look()
    second = game.process
    assert second is not first and second is not None and supervisor.restarts == 1
    # The same game: the very command (port, size, flags, telemetry file) of the first start.
    assert second.args == first.args
    assert wait_until(lambda: up(game), 30) and game.pid() == second.pid
    assert game.log_path == tmp_path / "game-restart-1.log"
    supervisor.look()
    assert len(gone) == 1 and failures.first() is None


def test_the_delay_doubles_with_each_death_and_the_sixth_within_minutes_ends_the_drive(
    games: list[BundledGame], tmp_path: Path
) -> None:
    game = start_game(games, tmp_path, CRASHES)
    clock, failures, gone = FakeClock(), Failures(), []
    supervisor = GameSupervisor(game, gone.append, failures, clock=clock)
    delays = []
    for restart in range(1, MAX_RESTARTS + 1):
        assert game.process is not None
        game.process.wait()
        supervisor.look()
        died_at = clock.now()
        while supervisor.restarts < restart:
            clock.advance(0.25)  # the session looks every 0.25 s
            supervisor.look()
        delays.append(clock.now() - died_at)
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0], abs=1e-9)
    assert failures.first() is None

    assert game.process is not None
    game.process.wait()
    supervisor.look()
    error = failures.of("game")
    assert isinstance(error, GameKeptDying)
    assert str(error) == (
        "the bundled game died 6 times within 180 s, so Charles stopped starting it again; its "
        "last words: exit 1; last logged: RuntimeError: no display for the game"
    )
    assert len(gone) == MAX_RESTARTS + 1
    clock.advance(RESTART_WINDOW)
    supervisor.look()
    assert supervisor.restarts == MAX_RESTARTS and game.exited(), "started after giving up"


def test_deaths_are_forgotten_after_the_window() -> None:
    policy = RestartPolicy()
    assert [policy.died(at) for at in (0.0, 10.0, 20.0)] == [0.5, 1.0, 2.0]
    # 200 s on, the first two deaths are more than RESTART_WINDOW ago: the third still counts.
    assert policy.died(200.0) == 1.0
    # A game that ran for minutes starts afresh.
    assert policy.died(600.0) == 0.5
    # Dying every minute is no tight loop: three deaths within any 180 s, never a give-up.
    steady = RestartPolicy()
    assert all(steady.died(60.0 * n) is not None for n in range(100))
    # Six quickly is.
    quick = RestartPolicy()
    assert [quick.died(float(n)) for n in range(6)][-1] is None


def test_a_game_the_drive_stopped_is_not_started_again(
    games: list[BundledGame], tmp_path: Path
) -> None:
    """The drive ends: whatever the supervisor was about to do, no game outlives it."""
    game = start_game(games, tmp_path, RUNS)
    clock, failures, gone = FakeClock(), Failures(), []
    supervisor = GameSupervisor(game, gone.append, failures, clock=clock)
    first = game.process
    assert first is not None
    first.kill()
    first.wait()
    supervisor.look()
    game.stop()
    clock.advance(FIRST_DELAY)
    supervisor.look()
    assert game.process is first and supervisor.restarts == 0


def test_only_a_game_charles_started_is_supervised() -> None:
    with pytest.raises(ValueError, match="only a game Charles started"):
        GameSupervisor(BundledGame(0), print, Failures())
