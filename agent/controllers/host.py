"""The controller process: where keys and virtual pads are held, apart from the drive.

`charles drive` runs the keyboard, vJoy and XInput backends in this small process of their own
(started by `agent.controllers.remote.ControllerProcess`), so that letting go never depends on
the driving process being able to run. The backend's dead-man (`controller.hold`) runs on this
process's threads: when the drive stops sending commands for any reason (a hung loop, a native
call holding the GIL, a debugger, swapping, SIGSTOP, Ctrl-Z), the keys are released and the pad
centred `hold` seconds after the last command. When the drive's end of the pipe closes (it
exited or was killed), everything is released and this process exits.

It runs in a session of its own, so the terminal's Ctrl-C and Ctrl-Z reach the drive, which
stops it properly, and never freeze it. Keys go only to the window the drive identified as the
game: the drive names it by handle (`GameWindow.handle`), and this process checks that window's
focus itself before every press, so a frozen drive cannot leave keys going to another window.

Protocol, one JSON object per line. In (stdin): first the settings ({"backend", "hold",
"keyboard", "vjoy_device"}), then {"set": [steering, accelerate, brake], "tag": n},
{"window": handle}, {"neutral": 1}, {"close": 1}. Out (stdout): {"ready": 1} or {"error":
message, "kind": class name}, then {"releases": n}, {"stopped": message}, {"log": [level,
message]} and last {"closed": 1, "releases": n}. Everything goes out through a bounded queue
and a writer thread of its own, so a drive that no longer reads can never block the threads
that release keys.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
import threading
from typing import Any, BinaryIO

from agent.config import ControllerConfig, KeyboardConfig
from agent.controllers.base import Controller
from agent.controllers.deadman import DEFAULT_HOLD
from agent.controllers.factory import PROCESS_BACKENDS, build_controller
from agent.errors import CharlesError
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.types import ControllerState

WATCH_PERIOD = 0.05
"""Seconds between looks at the backend's release count and health, to report them."""


class Outbox:
    """Messages to the drive, written by their own thread; dropped when the drive stops reading."""

    def __init__(self, stream: BinaryIO, size: int = 256) -> None:
        self._stream = stream
        self._queue: queue.Queue[bytes | None] = queue.Queue(size)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def post(self, message: dict[str, Any]) -> None:
        """Queue `message`; never blocks (a full queue drops it and counts)."""
        try:
            self._queue.put_nowait((json.dumps(message) + "\n").encode("utf-8"))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                self._stream.write(data)
                self._stream.flush()
            except OSError:  # the drive is gone; stdin's end of file stops this process
                return


class OutboxLogHandler(logging.Handler):
    """Sends this process's log records to the drive, which logs them as its own."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__(logging.INFO)
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._outbox.post({"log": [record.levelno, record.getMessage()]})
        except Exception:
            self.handleError(record)


class FocusTarget:
    """The game window the drive named: for the keyboard backend's focus check and, on X11, the
    one window its key events are addressed to (`agent.controllers.xkeys`).

    `has_focus()` runs on the keyboard's pulse thread, `aim()` on the main thread; the window
    handle and the sender guard their own connections.
    """

    def __init__(self) -> None:
        self._window: Any = None
        self._handle = 0
        self.sender: Any = None
        """Sends keys to the game's window only (X11); None where the OS has no such way."""
        if sys.platform.startswith("linux"):
            from agent.controllers.xkeys import WindowKeySender

            self.sender = WindowKeySender()

    @property
    def handle(self) -> int:
        return self._handle

    def aim(self, handle: int) -> None:
        if handle == self._handle:
            return
        if self._window is None and handle:
            from agent.capture import attach_window

            self._window = attach_window(handle)
        elif self._window is not None:
            self._window.target(handle)
        if self.sender is not None:
            self.sender.aim(handle)
        self._handle = handle

    def has_focus(self) -> bool:
        return self._handle != 0 and self._window is not None and self._window.has_focus()


def build_backend(settings: dict[str, Any]) -> tuple[Controller, FocusTarget | None]:
    """The controller the settings name, built in this process, and (keyboard) its window."""
    backend = settings.get("backend")
    if backend not in PROCESS_BACKENDS:
        raise ValueError(f"the controller process runs {PROCESS_BACKENDS}, not {backend!r}")
    config = ControllerConfig(
        backend=backend,
        hold=float(settings.get("hold", DEFAULT_HOLD)),
        vjoy_device=int(settings.get("vjoy_device", 1)),
        keyboard=KeyboardConfig(**settings.get("keyboard", {})),
    )
    if backend != "keyboard":
        return build_controller(config, 0, _no_focus), None
    focus = FocusTarget()
    return build_controller(config, 0, focus.has_focus, key_sender=focus.sender), focus


def apply(controller: Controller, focus: FocusTarget | None, message: dict[str, Any]) -> bool:
    """Carry out one message from the drive; False when it says to close."""
    if "set" in message:
        steering, accelerate, brake = (float(v) for v in message["set"])
        controller.set(ControllerState(steering, accelerate, brake), int(message.get("tag", 0)))
    elif "window" in message:
        if focus is not None and int(message["window"]) != focus.handle:
            controller.neutral()  # every key released in the old window before aiming anew
            focus.aim(int(message["window"]))
    elif "neutral" in message:
        controller.neutral()
    elif "close" in message:
        return False
    return True


def _no_focus() -> bool:
    return False


def watch(
    controller: Controller, outbox: Outbox, done: threading.Event, clock: Clock = SYSTEM_CLOCK
) -> None:
    """Report dead-man releases and a backend that stopped (the X server went away), looking
    every WATCH_PERIOD seconds on `clock`."""
    releases, stopped = 0, False
    while not clock.wait(done, WATCH_PERIOD):
        if controller.releases != releases:
            releases = controller.releases
            outbox.post({"releases": releases})
        error = getattr(controller, "error", None)
        if error is not None and not stopped:
            stopped = True
            outbox.post({"stopped": str(error), "kind": type(error).__name__})


class _Stop(Exception):
    """A termination signal: release everything and exit."""


_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name)
)


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def main() -> int:
    """The controller process: stdin and stdout are its pipes to the drive."""
    outbox = Outbox(sys.stdout.buffer)
    logging.basicConfig(level=logging.INFO, handlers=[OutboxLogHandler(outbox)], force=True)
    for number in _SIGNALS:
        signal.signal(number, _on_signal)
    return serve(sys.stdin.buffer, outbox)


def serve(stdin: BinaryIO, outbox: Outbox) -> int:
    """Run the controller the first line asks for until the drive closes it or goes away;
    what it has to say goes to `outbox`, which it closes."""
    controller: Controller | None = None
    done = threading.Event()
    try:
        first = stdin.readline()
        if not first:
            return 0
        try:
            controller, focus = build_backend(json.loads(first))
        except CharlesError as error:
            outbox.post({"error": str(error), "kind": type(error).__name__})
            return 0
        threading.Thread(
            target=watch, args=(controller, outbox, done), name="watch", daemon=True
        ).start()
        outbox.post({"ready": 1})
        for line in stdin:
            if not apply(controller, focus, json.loads(line)):
                break
    except _Stop:
        pass
    finally:
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:  # let nothing interrupt the release
                signal.signal(number, signal.SIG_IGN)
        done.set()
        if controller is not None:
            controller.close()
            outbox.post({"closed": 1, "releases": controller.releases})
        outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
