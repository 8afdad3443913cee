"""Keeping the bundled game Charles started alive for the whole drive: started again when it dies.

A drive runs for days on a live stream; a game that crashes, is killed or is closed must not
end it. The session's main thread calls `GameSupervisor.look()` a few times a second (it does
not run a thread of its own: the game must be started from the thread that started the first
one, or the kernel's parent-death signal would end it with that thread, see
`agent.runtime.lifetime`). When the game's process has ended, the supervisor

1. says so at once (`on_gone`: the capture drops the window, so the drive loop goes neutral and
   the pad holds no stale command into the next game),
2. waits a delay that doubles with each death in the last `RestartPolicy.window` seconds
   (0.5, 1, 2, 4, 8 s), so a game that dies on start-up is not restarted in a tight loop,
3. starts the game again exactly as it was first started (same port, size, flags, telemetry
   file); the capture finds the new window by the new process (`BundledGame.pid`), never by
   title, and the drive goes on.

The 6th death within the window (5 restarts that did not hold) ends the drive: the supervisor
reports `GameKeptDying`, one line with the game's last words, to the session's `Failures`.

Only a game Charles started is supervised: one a person started is theirs to reopen, and the
drive waits for its window as it always has.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import CharlesError
from agent.game.launcher import BundledGame, GameStartError
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.liveness import Failures

log = logging.getLogger(__name__)

PART = "game"
"""How the supervisor's give-up is named in the session's Failures."""

FIRST_DELAY = 0.5
"""Seconds from noticing the first death to starting the game again: a moment for the old
process's window and port to go, not long enough to matter to a viewer."""
MAX_RESTARTS = 5
"""Restarts within `RESTART_WINDOW` before a further death ends the drive."""
RESTART_WINDOW = 180.0
"""Seconds over which deaths count towards the backoff and the give-up: a game that has run
this long since its last death starts afresh at `FIRST_DELAY`."""


class GameKeptDying(CharlesError):
    """The bundled game died again and again right after being started; restarting stopped."""


@dataclass
class RestartPolicy:
    """When to start a game that died again, and when to stop trying (seconds on one clock)."""

    first_delay: float = FIRST_DELAY
    max_restarts: int = MAX_RESTARTS
    window: float = RESTART_WINDOW
    _deaths: deque[float] = field(default_factory=deque, init=False, repr=False)

    def died(self, at: float) -> float | None:
        """The game died at `at`: seconds to wait before starting it again; None to give up
        (more than `max_restarts` deaths within `window` seconds, this one included)."""
        self._deaths.append(at)
        while at - self._deaths[0] > self.window:
            self._deaths.popleft()
        recent = len(self._deaths)
        if recent > self.max_restarts:
            return None
        return self.first_delay * 2 ** (recent - 1)

    def recent_deaths(self) -> int:
        """Deaths counted by the last `died` (those within `window` of it)."""
        return len(self._deaths)


class GameSupervisor:
    """Restarts `game` (one Charles started) when its process ends; see the module docstring.

    `on_gone(reason)` is called as soon as a death is noticed. `restarts` counts the games
    started again. After giving up, `look()` does nothing more.
    """

    def __init__(
        self,
        game: BundledGame,
        on_gone: Callable[[str], None],
        failures: Failures,
        policy: RestartPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if game.launch is None:
            raise ValueError("only a game Charles started can be restarted")
        self._game = game
        self._on_gone = on_gone
        self._failures = failures
        self._policy = policy if policy is not None else RestartPolicy()
        self._clock = clock
        self._restart_at: float | None = None
        """Clock time the dead game is due to start again; None while it runs."""
        self._gave_up = False
        self.restarts = 0

    def look(self) -> None:
        """Notice a death, or start the game again when its delay is up. Cheap; call it often
        (the delay is kept to within one call's interval)."""
        if self._gave_up:
            return
        now = self._clock.now()
        if self._restart_at is None:
            if self._game.exited():
                self._died(now)
        elif now >= self._restart_at:
            self._restart_at = None
            self._start_again()

    def _start_again(self) -> None:
        try:
            started = self._game.restart()
        except GameStartError as error:
            # Not a game that crashed but one that cannot be started (no disk for its log):
            # trying again will not help.
            self._gave_up = True
            self._failures.report(PART, error)
            return
        if not started:
            return  # the drive stopped the game: it is ending
        self.restarts += 1
        process = self._game.process
        log.info(
            "started the bundled game again (pid %d; restart %d)",
            process.pid if process is not None else 0, self.restarts,
        )  # fmt: skip

    def _died(self, now: float) -> None:
        ending = self._game.ending()
        self._on_gone(f"the bundled game ended ({ending})")
        delay = self._policy.died(now)
        if delay is None:
            self._gave_up = True
            error = GameKeptDying(
                f"the bundled game died {self._policy.recent_deaths()} times within "
                f"{self._policy.window:.0f} s, so Charles stopped starting it again; its last "
                f"words: {ending}"
            )
            self._failures.report(PART, error)
            return
        self._restart_at = now + delay
        log.warning("the bundled game ended (%s); starting it again in %.1f s", ending, delay)
