"""Keyboard (pynput): analog values as pulse-width key presses, for games without pad support.

Over every `pulse_period` seconds each key is held for the fraction of the period its value asks
for: steering 0.3 holds the right key 30% of the time, steering -1 holds the left key throughout,
accelerate 0.5 holds the accelerate key half the time. All keys start their press at the
beginning of a period. A game polling at 60 Hz sees the average, which is the analog value.

Safety (stuck keys are the classic failure of scripts like this):
- keys are pressed only while `has_focus()` is True; when it turns False every held key is
  released within `focus_poll` seconds, and nothing is pressed until focus comes back;
- the dead-man: a state older than `hold` seconds without a newer `set()` becomes neutral on
  the pulse thread, so a hung drive loop cannot leave a key pulsing or held;
- `neutral()` and `close()` release every held key before they return, from the caller's thread;
- an exception on the pulse thread (the X server went away, `has_focus` failed) releases all
  keys, is stored in `error`, and makes the next `set()` raise, so the drive loop stops too;
- keys still held at interpreter exit are released by an `atexit` hook.

pynput is imported in the constructor: on Linux it needs a display at import time, and importing
this module must work without one.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from agent.capture.screen import display_gone, explain_display_loss
from agent.config import KeyboardConfig
from agent.controllers.base import Controller
from agent.controllers.deadman import DEFAULT_HOLD, DeadMan
from agent.errors import ConfigError, DependencyError, log_failure
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.types import NEUTRAL, ControllerState, clamp_state

logger = logging.getLogger(__name__)

ROLES = ("accelerate", "brake", "left", "right")
"""The keys a KeyboardConfig names, in the order they are configured."""

_live: weakref.WeakSet[KeyboardController] = weakref.WeakSet()


def duty_cycles(state: ControllerState) -> dict[str, float]:
    """Fraction of each period (0..1) every role's key is held for `state`."""
    state = clamp_state(state)
    return {
        "accelerate": state.accelerate,
        "brake": state.brake,
        "left": max(0.0, -state.steering),
        "right": max(0.0, state.steering),
    }


def roles_down(duties: Mapping[str, float], phase: float) -> frozenset[str]:
    """Roles whose key is down at `phase` (0 <= phase < 1) of the period."""
    return frozenset(role for role, duty in duties.items() if phase < duty)


def until_next_edge(duties: Mapping[str, float], phase: float) -> float:
    """Fraction of a period from `phase` to the next release, or to the period's end."""
    edges = [duty for duty in duties.values() if phase < duty < 1.0]
    return min(edges, default=1.0) - phase


def resolve_key(name: str, keyboard: Any) -> Any:
    """A config key name as a pynput key: a single character, or a `pynput.keyboard.Key` name.

    Letters are taken lower case: "W" means the W key, not Shift+W.
    """
    if len(name) == 1:
        return keyboard.KeyCode.from_char(name.lower())
    try:
        return getattr(keyboard.Key, name.lower())
    except AttributeError:
        raise ConfigError(
            f"keyboard key '{name}' is not known on this system; use a single character or a "
            "key name such as up, space, f8"
        ) from None


def _open_pynput(keyboard: Any) -> Any:
    try:
        return keyboard.Controller()
    except Exception as error:  # the display went away between import and now
        raise DependencyError(
            f"keyboard backend cannot open the desktop's keyboard ({error}); run Charles "
            "inside the desktop session that shows the game"
        ) from None


def _load_pynput_keyboard() -> Any:
    try:
        from pynput import keyboard
    except ModuleNotFoundError:
        raise DependencyError("keyboard backend needs pynput; run: pip install pynput") from None
    except ImportError as error:  # pynput probes the display at import time
        reason = str(error).splitlines()[0]
        raise DependencyError(
            f"keyboard backend cannot reach the desktop ({reason}); run Charles inside the "
            "desktop session that shows the game (on Linux: X11 with DISPLAY set) or choose "
            "another controller.backend"
        ) from None
    return keyboard


class KeyboardController(Controller):
    """Presses the configured keys with pulse-width modulation on its own thread.

    `set()` only stores the newest state and wakes the thread; it never waits for key presses.
    `has_focus` is called on the pulse thread (about every `focus_poll` seconds); it should be
    cheap and must not block. `sender` replaces pynput's keyboard (it has pynput's press and
    release, and `keycode(key)` to check a key exists): the controller process sends keys to
    the game's own window with one (`agent.controllers.xkeys`). The pulses, the focus poll and
    the dead-man keep time on `clock`.
    """

    name = "keyboard"

    def __init__(
        self,
        config: KeyboardConfig,
        has_focus: Callable[[], bool],
        *,
        hold: float = DEFAULT_HOLD,
        focus_poll: float = 0.02,
        sender: Any = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        keyboard = _load_pynput_keyboard()
        self._keys = {role: resolve_key(getattr(config, role), keyboard) for role in ROLES}
        self._period = config.pulse_period
        self._has_focus = has_focus
        self._focus_poll = focus_poll
        self._clock = clock
        if sender is not None:
            # A sender that addresses the game's window itself (agent.controllers.xkeys):
            # every key must exist on this keyboard before anything is pressed.
            for key in self._keys.values():
                sender.keycode(key)
        self._keyboard: Any = sender if sender is not None else _open_pynput(keyboard)
        # Re-entrant: neutral() from a signal handler on a thread inside neutral() must not hang.
        self._lock = threading.RLock()
        self._state = NEUTRAL
        self._deadman = DeadMan(hold, self.name)
        self._held: set[Any] = set()
        self._closed = False
        self._wake = threading.Event()
        self.error: BaseException | None = None
        """The exception that stopped the pulse thread, if any."""
        self._thread = threading.Thread(target=self._run, name="keyboard-controller", daemon=True)
        _live.add(self)
        self._thread.start()

    @property
    def held(self) -> frozenset[Any]:
        """pynput keys currently pressed by this controller."""
        with self._lock:
            return frozenset(self._held)

    def set(self, state: ControllerState, tag: int = 0) -> None:
        if self.error is not None:
            raise RuntimeError(f"keyboard controller stopped: {self.error!r}") from self.error
        state = clamp_state(state)
        with self._lock:  # held by the pulse thread only for a few key events at a time
            if self._closed:
                return
            self._state = state
            if state == NEUTRAL:
                self._deadman.disarm()
            else:
                self._deadman.arm(self._clock.now())
        self._wake.set()

    def neutral(self) -> None:
        with self._lock:
            self._state = NEUTRAL
            self._deadman.disarm()
            self._release_all()
        self._wake.set()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._state = NEUTRAL
            self._release_all()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        _live.discard(self)
        with self._lock:
            if not self._held:
                # Frees pynput's display connection now, while the display surely still exists;
                # a key whose release failed keeps it, so a later neutral() can try again.
                self._keyboard = None

    def _run(self) -> None:
        started = self._clock.now()
        try:
            while not self._closed:
                focused = bool(self._has_focus())
                now = self._clock.now()
                phase = ((now - started) % self._period) / self._period
                with self._lock:
                    if self._closed:
                        break
                    if self._deadman.expired(now):
                        self._state = NEUTRAL
                        self._deadman.release()
                    if focused:
                        duties = duty_cycles(self._state)
                        self._hold({self._keys[role] for role in roles_down(duties, phase)})
                        wait = until_next_edge(duties, phase) * self._period
                    else:
                        self._hold(set())
                        wait = self._focus_poll
                self._clock.wait(self._wake, min(wait, self._focus_poll))
                self._wake.clear()
        except Exception as error:
            self.error = explain_display_loss(error)
            log_failure(logger, "keyboard controller stopped; releasing all keys", self.error)
            self._release_all()

    def _hold(self, wanted: set[Any]) -> None:
        """Release what is held but not wanted, then press what is wanted; lock held."""
        for key in self._held - wanted:
            self._keyboard.release(key)
            self._held.discard(key)
        for key in wanted - self._held:
            # Recorded before pressing: a press that fails half way is still released later.
            self._held.add(key)
            self._keyboard.press(key)

    def _release_all(self) -> None:
        """Release every held key; never raises (it runs after errors)."""
        with self._lock:
            for key in list(self._held):
                try:
                    self._keyboard.release(key)
                except Exception as error:
                    # Expected when the display is gone (and then no key is held any more).
                    logger.warning(
                        "keyboard controller could not release %s: %s", key, error,
                        exc_info=not display_gone(),
                    )  # fmt: skip
                else:
                    self._held.discard(key)


@atexit.register
def _close_all() -> None:
    # The pulse thread is a daemon: if the program ends without close(), release keys here so
    # the OS is not left with a key down.
    for controller in list(_live):
        controller.close()
