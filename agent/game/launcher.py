"""The bundled game as `charles drive` sees it: found running, or started and tied to the drive.

A running game is found by asking the gamepad port who listens there (`ask_identity`), never by
window title: a text editor titled "notes on charles carracing" is not the game. A game that
another `charles drive` started, alive or dead, is refused rather than adopted. A game Charles
starts itself dies with it (parent-death signal and a lifeline pipe, see
`agent.runtime.lifetime`), and
its output goes to a log file, never to a pipe nobody reads (a full pipe would freeze it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.capture.window import WindowError
from agent.errors import CharlesError
from agent.game.channel import GameIdentity, ask_identity
from agent.runtime.processes import stop_process

log = logging.getLogger(__name__)

FOLDER_PREFIX = "charles-game-"
"""A started game's folder in the temporary folder: charles-game-<drive's pid>-<random>."""
QUIET_MINUTES = 10.0
"""A game folder of a dead drive is removed once nothing in it has changed for this long."""
STOP_TIMEOUT = 10.0
"""Seconds the game gets to quit on SIGTERM before it is killed."""
TELEMETRY_MAX_MB = 8.0
"""The telemetry file of a game Charles starts: ~55 minutes of it, at most twice that kept
(the drive reads only its last record; a drive that runs for days would otherwise leave
~200 MB a day in the temporary folder)."""


class GameStartError(CharlesError):
    """The bundled game could not be started or exited during start-up."""


@dataclass(frozen=True)
class GameLaunch:
    """How Charles started the bundled game: what a restart runs again, unchanged (the same
    port, size, flags such as `--stamp`, telemetry file and owner)."""

    command: tuple[str, ...]
    folder: Path
    """Where its telemetry and logs go (one log per start: game.log, game-restart-1.log, ...)."""


@dataclass
class BundledGame:
    """The bundled game a drive targets on gamepad port `port`.

    `process` is set when Charles started the game (then `telemetry` and `log_path` are its
    files, and `launch` says how to start it again); None when it was already running and
    Charles talks to it. `restart()` replaces `process` and `log_path` (on the thread that
    started the first one: see `agent.runtime.lifetime`); other threads only read them.
    """

    port: int
    process: subprocess.Popen[bytes] | None = None
    telemetry: Path | None = None
    log_path: Path | None = None
    launch: GameLaunch | None = None
    restarts: int = 0
    """Times `restart()` started the game again."""
    _stopped: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def pid(self) -> int:
        """The game's process id, asked afresh for a game Charles did not start (it may have
        been closed and reopened). WindowError while no acceptable game answers, or while the
        game Charles started has ended and not been started again: its window is no target."""
        process = self.process
        if process is not None:
            if process.poll() is not None:
                raise WindowError(
                    f"the bundled game (pid {process.pid}) has ended; waiting for it to start again"
                )
            return process.pid
        identity = ask_identity(self.port)
        if identity is None:
            raise WindowError(
                f"the bundled game is not running (nothing answers on port {self.port}); "
                "start it with `charles game`"
            )
        refuse_foreign(identity, self.port)
        return identity.pid

    def exited(self) -> bool:
        process = self.process
        return process is not None and process.poll() is not None

    def last_words(self) -> str:
        """The last line the game logged, or its exit status: why it ended."""
        return self._last_logged() or exit_description(self._returncode())

    def ending(self) -> str:
        """How the game's process ended and the last line it logged, e.g. "killed by SIGKILL;
        last logged: ..."."""
        how = exit_description(self._returncode())
        said = self._last_logged()
        return f"{how}; last logged: {said}" if said else how

    def start(self) -> None:
        """Start the game from `launch` (its log: game.log)."""
        with self._lock:
            self._spawn("game.log")

    def restart(self) -> bool:
        """Start the game again exactly as it was first started, once its process has ended;
        False (nothing started) after `stop()`: the drive is ending."""
        with self._lock:
            if self._stopped:
                return False
            old = self.process
            if old is not None:
                if old.poll() is None:
                    raise RuntimeError(f"the bundled game (pid {old.pid}) is still running")
                _close_lifeline(old)
            self._spawn(f"game-restart-{self.restarts + 1}.log")
            self.restarts += 1
        return True

    def stop(self) -> None:
        """Stop the game Charles started (SIGTERM, then SIGKILL); no start after this."""
        with self._lock:
            self._stopped = True
            process = self.process
        if process is not None:
            _stop_game(process)

    def _returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def _spawn(self, log_name: str) -> None:
        if self.launch is None:
            raise RuntimeError("only a game Charles launched can be started (again)")
        log_path = self.launch.folder / log_name
        log.info("starting the bundled game (its log: %s)", log_path)
        try:
            process = spawn_logged(list(self.launch.command), log_path)
        except OSError as error:
            raise GameStartError(f"cannot start the bundled game: {error}") from None
        self.process, self.log_path = process, log_path

    def _last_logged(self) -> str:
        text = ""
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                text = _tail(self.log_path)
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else ""


def exit_description(status: int | None) -> str:
    """A process's exit status in words: "exit 1", "killed by SIGKILL"."""
    if status is None:
        return "exit status unknown"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exit {status}"


def connect_or_launch(
    port: int,
    size: tuple[int, ...],
    launch: bool,
    stack: contextlib.ExitStack,
    extra_args: Sequence[str] = (),
) -> BundledGame:
    """The bundled game on `port`: the one running there, else (with `launch`) a new one.

    The new game is stopped when `stack` closes. Raises CharlesError when a running game
    belongs to another `charles drive`, or when none runs and `launch` is off.
    """
    identity = ask_identity(port)
    if identity is not None:
        refuse_foreign(identity, port)
        log.info("driving the bundled game already running on port %d (pid %d)", port, identity.pid)
        return BundledGame(port)
    if not launch:
        raise WindowError(
            f"the bundled game is not running (nothing answers on port {port}); start it with "
            "`charles game`, or set game.launch = true"
        )
    return launch_game(port, size, stack, extra_args)


def launch_game(
    port: int, size: tuple[int, ...], stack: contextlib.ExitStack, extra_args: Sequence[str] = ()
) -> BundledGame:
    """Start the bundled game for this process; `extra_args` are more `agent.game` flags."""
    remove_folders_left_behind(Path(tempfile.gettempdir()))
    prefix = f"{FOLDER_PREFIX}{os.getpid()}-"
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    telemetry = folder / "telemetry.jsonl"
    width, height = size
    command = (
        sys.executable, "-m", "agent.game", "--size", f"{width}x{height}", "--port", str(port),
        "--telemetry", str(telemetry), "--telemetry-max-mb", str(TELEMETRY_MAX_MB),
        "--owner-pid", str(os.getpid()), "--lifeline",
        *extra_args,
    )  # fmt: skip
    game = BundledGame(port, telemetry=telemetry, launch=GameLaunch(command, folder))
    game.start()
    stack.callback(game.stop)
    return game


def remove_folders_left_behind(temporary: Path) -> list[Path]:
    """Remove the game folders (logs, telemetry) of drives that died without cleaning up.

    A drive ended by kill -9 or a power cut cannot remove the folder of the game it started;
    the next launch does. Only folders named with the pid of a process that no longer exists,
    that are real folders (not links), belong to this user, and in which nothing was written
    for `QUIET_MINUTES` (a running game writes telemetry ten times a second: a drive in another
    pid namespace sharing this folder looks dead by its pid, not by its files). Returns those
    removed.
    """
    removed = []
    quiet_since = time.time() - 60 * QUIET_MINUTES
    for entry in temporary.glob(f"{FOLDER_PREFIX}*-*"):
        pid_text = entry.name[len(FOLDER_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        if _alive(int(pid_text)) is not False:  # alive, or cannot be asked (Windows): kept
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != getattr(os, "getuid", lambda: 0)():
            continue
        if _last_written(entry, info.st_mtime) > quiet_since:
            continue
        shutil.rmtree(entry, ignore_errors=True)  # never follows a link inside it
        removed.append(entry)
    if removed:
        log.info("removed %d game folder(s) left behind by drives that died", len(removed))
    return removed


def _last_written(folder: Path, folder_time: float) -> float:
    """The newest modification time of `folder` and the entries in it (links not followed)."""
    newest = folder_time
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def spawn_logged(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `command` with its output going to `log_path` and a lifeline pipe as its stdin.

    A file, not a pipe, takes the output: a pipe that nobody reads fills up after 64 KiB and
    then blocks the child on its next write. The lifeline: the child can quit when it reads end
    of file, which happens when this process, holding the pipe's other end, is gone.
    """
    with log_path.open("wb") as output:
        return subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT
        )


def refuse_foreign(identity: GameIdentity, port: int) -> None:
    """CharlesError when the game on `port` was started by another `charles drive`."""
    owner = identity.owner_pid
    if not owner or owner == os.getpid():
        return
    if _alive(owner) is False:
        raise CharlesError(
            f"a bundled game left over from an earlier charles drive (pid {owner}, gone) is "
            f"still running on port {port}: close it (kill {identity.pid}) and try again"
        )
    raise CharlesError(
        f"the bundled game on port {port} (pid {identity.pid}) belongs to another charles "
        f"drive (pid {owner}); stop that one first, or give this one another game.channel_port"
    )


def _alive(pid: int) -> bool | None:
    """Whether process `pid` exists; None where that cannot be asked safely (Windows)."""
    if sys.platform == "win32":
        return None  # os.kill(pid, 0) would terminate it there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_game(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, STOP_TIMEOUT)
    _close_lifeline(process)


def _close_lifeline(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()


def _tail(path: Path, size: int = 4096) -> str:
    with path.open("rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - size))
        return file.read().decode(errors="replace")
