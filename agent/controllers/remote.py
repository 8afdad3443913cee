"""The drive's end of the controller process (`agent.controllers.host`).

`ControllerProcess` is a `Controller` like any other to the drive loop, but the keys and pads
it drives are held by a small process of their own, which lets go `hold` seconds after the last
command whatever happens to this one (frozen, stopped, killed). Commands cross a pipe as one
short JSON line each, written without ever blocking the drive loop: a command the controller
process has no room for (it is not reading) is dropped and counted, never waited for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import asdict
from typing import Any

from agent.capture.window import GameWindow
from agent.config import ControllerConfig
from agent.controllers.base import Controller
from agent.errors import CharlesError, ConfigError, DependencyError
from agent.runtime.liveness import Failures
from agent.types import ControllerState

log = logging.getLogger(__name__)

PART = "controller"
"""How the controller process's failure is named in the session's Failures."""

START_TIMEOUT = 30.0
"""Seconds the controller process gets to open its driver and say it is ready."""
CLOSE_TIMEOUT = 3.0
"""Seconds it gets to release everything and exit before it is terminated."""

_ERRORS: dict[str, type[CharlesError]] = {
    "ConfigError": ConfigError,
    "DependencyError": DependencyError,
}


class ControllerProcessError(CharlesError):
    """The controller process could not start, or ended while driving."""


class ControllerProcess(Controller):
    """Drives backend `config.backend` through a controller process of its own.

    `window` is the game's window: the keyboard backend presses keys only while it has the
    focus (the controller process checks that itself). `command` and `env` start the process
    (tests give another environment, such as a fake driver module on PYTHONPATH).
    """

    def __init__(
        self,
        config: ControllerConfig,
        window: GameWindow | None,
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        failures: Failures | None = None,
    ) -> None:
        self.name = config.backend  # type: ignore[misc]  # per instance: the backend it runs
        self._hold = config.hold
        self._window = window
        self._window_sent: int | None = None
        self._releases = 0
        self._dropped = 0
        self._closed = False
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._start_error: CharlesError | None = None
        self._failures = failures if failures is not None else Failures()
        self._lock = threading.RLock()  # re-entrant: neutral() from a signal handler mid-set()
        self._process = _spawn(command, env)
        self._stdin_fd = self._process.stdin.fileno()  # type: ignore[union-attr]
        # A full pipe (the controller process frozen) must drop a command, not stall the loop.
        with contextlib.suppress(OSError):
            os.set_blocking(self._stdin_fd, False)
        self._reader = threading.Thread(target=self._read, name="controller-reader", daemon=True)
        self._reader.start()
        settings = {
            "backend": config.backend,
            "hold": config.hold,
            "vjoy_device": config.vjoy_device,
            "keyboard": asdict(config.keyboard),
        }
        self._send(settings)
        try:
            started = self._ready.wait(START_TIMEOUT)
        except BaseException:  # a stop signal while it starts: it must not outlive this
            self._stop_process()
            raise
        if not started or self._start_error is not None:
            self._stop_process()
            raise self._start_error or ControllerProcessError(
                f"the {config.backend} controller process did not start in {START_TIMEOUT:.0f} s"
            )
        self._aim()

    @property
    def error(self) -> BaseException | None:
        """Why the controller process stopped driving (its driver failed, it died), if it did."""
        return self._failures.of(PART)

    @property
    def releases(self) -> int:
        return self._releases

    @property
    def hold(self) -> float:
        return self._hold

    @property
    def dropped(self) -> int:
        """Commands not sent because the controller process was not reading."""
        return self._dropped

    @property
    def pid(self) -> int:
        return self._process.pid

    def set(self, state: ControllerState, tag: int = 0) -> None:
        if self.error is not None:
            raise ControllerProcessError(f"{self.name} controller stopped: {self.error}")
        with self._lock:
            if self._closed:
                return
            self._aim()
            self._send({"set": [state.steering, state.accelerate, state.brake], "tag": tag})

    def neutral(self) -> None:
        with self._lock:
            if not self._closed:
                self._send({"neutral": 1})

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._send({"neutral": 1})
            self._send({"close": 1})
        self._finished.wait(CLOSE_TIMEOUT)
        self._stop_process()

    def _aim(self) -> None:
        """Tell the controller process which window is the game (again after a re-acquire)."""
        try:
            handle = self._window.handle if self._window is not None else 0
        except Exception:  # a handle that cannot say means no window: no keys
            handle = 0
        if handle != self._window_sent:
            self._send({"window": handle})
            self._window_sent = handle

    def _send(self, message: dict[str, Any]) -> None:
        """Write one line; never blocks and never raises (it runs in `finally` blocks)."""
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            # One write of less than PIPE_BUF bytes: all of it or nothing, never half a line.
            os.write(self._stdin_fd, data)
        except BlockingIOError:
            self._dropped += 1
        except OSError as error:  # the controller process is gone; _read reports why
            log.debug("controller process pipe: %s", error)

    def _read(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self._receive(message)
        if not self._closed and self.error is None:
            status = self._process.wait()
            self._failures.report(PART, ControllerProcessError(
                f"the {self.name} controller process ended unexpectedly (exit status {status})"
            ))  # fmt: skip
        self._ready.set()
        self._finished.set()

    def _receive(self, message: dict[str, Any]) -> None:
        if "log" in message:
            level, text = message["log"]
            log.log(int(level), "%s", text)
        elif "closed" in message:  # before "releases": the closing message carries both
            self._releases = int(message.get("releases", self._releases))
            self._finished.set()
        elif "releases" in message:
            self._releases = int(message["releases"])
        elif "ready" in message:
            self._ready.set()
        elif "error" in message:
            kind = _ERRORS.get(message.get("kind", ""), ControllerProcessError)
            self._start_error = kind(str(message["error"]))
            self._ready.set()
        elif "stopped" in message:
            self._failures.report(PART, ControllerProcessError(str(message["stopped"])))

    def _stop_process(self) -> None:
        process = self._process
        for stop in (None, process.terminate, process.kill):
            if stop is not None:
                with contextlib.suppress(OSError):
                    stop()
            try:
                process.wait(CLOSE_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(OSError):
            self._process.stdin.close()  # type: ignore[union-attr]
        self._reader.join(CLOSE_TIMEOUT)


def _spawn(command: list[str] | None, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    """Start the controller process in a session (Windows: process group) of its own, so the
    terminal's Ctrl-C and Ctrl-Z go to the drive only."""
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(
        command or [sys.executable, "-m", "agent.controllers.host"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        **kwargs,
    )
