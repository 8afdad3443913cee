"""The game host: CarRacing in a pygame window titled "Charles CarRacing", in real time.

One thread does everything, on a 50 Hz grid kept by a RateKeeper: read the window's events and
keys, poll the virtual gamepad, step the physics once, and every so often write a telemetry
sample or redraw the window. Redraws run at the display rate, not the physics rate: drawing a
picture costs about 7 ms, a physics step 0.1 ms, and the host shares two cores with a CNN.

Keys on the window: arrows/WASD drive, P pauses and resumes, Esc quits (paused or not). A paused
game steps no physics and ignores the gamepad and the autopilot (the gamepad port is still read,
so nothing queues up), but keeps drawing, with a PAUSED banner, and keeps publishing frame
records and telemetry, both marked paused. A reset request on the gamepad port puts the car back
on the track (`HostedCarRacing.put_back_on_track`), except while paused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from functools import partial

import pygame

from agent.game.autopilot import Autopilot
from agent.game.camera import draw_view
from agent.game.channel import FrameRecord, GamepadReceiver
from agent.game.inputs import choose_input, keyboard_state
from agent.game.options import WINDOW_TITLE, GameError, GameOptions
from agent.game.sim import PHYSICS_HZ, HostedCarRacing, view_rect
from agent.game.stamp import draw_stamp
from agent.game.telemetry import TelemetryRecord, TelemetryWriter
from agent.runtime.lifetime import die_with_parent
from agent.runtime.ratekeeper import RateKeeper
from agent.runtime.signals import on_stop_signals
from agent.types import NEUTRAL, ControllerState

log = logging.getLogger(__name__)

TELEMETRY_HZ = 10.0
STDIN = 0
ASPECT = 16 / 9
PAUSE_KEY = pygame.K_p
_INVISIBLE_DRIVERS = ("offscreen", "dummy")


def run_game(options: GameOptions) -> int:
    """Run the game until Esc, the window closes, SIGTERM/SIGINT or `options.seconds`; returns 0.

    Raises GameError when the game cannot start (no display, the gamepad port is taken).
    """
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        # Installed before SDL starts, so SDL sees handlers in place and keeps its own out.
        stack.enter_context(on_stop_signals(partial(_stop_on_signal, stop)))
        _tie_to_owner(options, stop)
        try:
            receiver = GamepadReceiver(options.channel_port, owner_pid=options.owner_pid)
        except OSError as error:
            raise GameError(str(error)) from None
        stack.callback(receiver.close)
        telemetry = None
        if options.telemetry is not None:
            try:
                telemetry = TelemetryWriter(options.telemetry, options.telemetry_max_bytes)
            except OSError as error:
                raise GameError(f"cannot write telemetry to {options.telemetry}: {error}") from None
            stack.callback(telemetry.close)
        window = _open_window(options.size)
        stack.callback(pygame.quit)
        env = HostedCarRacing()
        stack.callback(env.close)
        session = _Session(options, env, window, receiver, telemetry)
        log.info(
            "game started: %dx%d window, seed %d, gamepad port %d, autopilot %s",
            *options.size, options.seed, receiver.port, "on" if options.autopilot else "off",
        )  # fmt: skip
        session.run(stop)
    return 0


def _open_window(size: tuple[int, int]) -> pygame.Surface:
    # Only the display (and fonts, which CarRacing starts itself): no audio device is needed,
    # and initialising one under a headless X server only costs time.
    try:
        pygame.display.init()
        window = pygame.display.set_mode(size)
    except pygame.error as error:
        pygame.quit()
        raise GameError(
            f"cannot open the game window ({error}); set DISPLAY to a running X server (or Xvfb)"
        ) from None
    # With no display reachable, pygame-ce falls back to SDL's offscreen driver: a game nobody
    # can see or capture. Only a caller who asked for such a driver gets one.
    if pygame.display.get_driver() in _INVISIBLE_DRIVERS and "SDL_VIDEODRIVER" not in os.environ:
        pygame.quit()
        raise GameError(
            "no display for the game window; set DISPLAY to a running X server (or Xvfb)"
        )
    pygame.display.set_caption(WINDOW_TITLE)
    pygame.mouse.set_visible(False)
    return window


def _tie_to_owner(options: GameOptions, stop: threading.Event) -> None:
    """Never outlive the `charles drive` that started this game, even if it was `kill -9`ed."""
    # Only a parent can be tied to with the kernel's parent-death signal.
    is_parent = options.owner_pid and options.owner_pid == os.getppid()
    if is_parent and not die_with_parent(options.owner_pid):
        raise GameError(f"the charles drive that started the game ({options.owner_pid}) exited")
    if options.lifeline:
        threading.Thread(target=_watch_lifeline, args=(stop,), name="lifeline", daemon=True).start()


def _watch_lifeline(stop: threading.Event) -> None:
    # The owner keeps the write end of our stdin pipe open; the kernel closes it when the owner
    # exits in any way, and the read returns end of file. Works on every platform.
    # os.read on the raw descriptor, not sys.stdin: a daemon thread blocked inside a buffered
    # reader holds its lock, and interpreter shutdown then aborts on that lock.
    with contextlib.suppress(OSError):
        while os.read(STDIN, 4096):
            pass
    log.info("the agent that started the game is gone; quitting")
    stop.set()


def _stop_on_signal(stop: threading.Event, name: str) -> None:
    log.info("game stopping on %s", name)
    stop.set()


def _letterbox(window: pygame.Surface) -> pygame.Surface:
    """The largest 16:9 part of the window, centred; the window itself when it is 16:9."""
    width, height = window.get_size()
    fit_width = min(width, round(height * ASPECT))
    fit_height = min(height, round(fit_width / ASPECT))
    if (fit_width, fit_height) == (width, height):
        return window
    window.fill((0, 0, 0))
    area = pygame.Rect((width - fit_width) // 2, (height - fit_height) // 2, fit_width, fit_height)
    return window.subsurface(area)


class _Session:
    """The state of one running game: episode, distance, clocks."""

    def __init__(
        self,
        options: GameOptions,
        env: HostedCarRacing,
        window: pygame.Surface,
        receiver: GamepadReceiver,
        telemetry: TelemetryWriter | None,
    ) -> None:
        self.options = options
        self.env = env
        self.receiver = receiver
        self.telemetry = telemetry
        self.autopilot = Autopilot() if options.autopilot else None
        self.screen = _letterbox(window)
        self.view = view_rect(ASPECT)
        self.episode = 1
        self.distance = 0.0
        self.frames = 0
        self.paused = False
        self.resets = 0
        self.suggestion: ControllerState | None = None
        self.tag = 0
        """The tag of the pad command physics applied last tick (0: the pad did not drive)."""
        self.tag_since = math.nan
        """time.monotonic() of the tick that first applied `tag`."""
        self._next_sample = 0.0
        self._banner: pygame.Surface | None = None

    def run(self, stop: threading.Event) -> None:
        self.env.reset(seed=self.options.seed)
        rate = RateKeeper(PHYSICS_HZ)
        start = time.monotonic()
        self._next_sample = next_frame = start
        waiting = self.options.wait_for_input
        while not stop.is_set() and self._handle_events():
            now = time.monotonic()
            if self.options.seconds is not None and now - start >= self.options.seconds:
                break
            state, source = self._input()
            self._serve_reset_requests()
            if waiting and source != "none":
                waiting = False
                log.info("first input (%s): the race starts", source)
            # While waiting the car stands on the grid, and the episode's clock with it.
            if not waiting:
                self._tick(state, source, now - start)
            # A neutral pad drives too when nothing else does ("none"), unless nothing moves.
            moved = not (waiting or self.paused)
            self._follow_tag(moved and source in ("gamepad", "none"), now)
            if now >= next_frame:
                self._draw(state)
                next_frame = max(next_frame + 1.0 / self.options.fps, now)
            rate.keep_time()
        elapsed = time.monotonic() - start
        log.info(
            "game stopped after %.1f s: %d episodes, %.0f m driven, physics %.1f Hz "
            "(%d late ticks), display %.1f fps",
            elapsed, self.episode, self.distance, rate.ticks / max(elapsed, 1e-9),
            rate.lagged, self.frames / max(elapsed, 1e-9),
        )  # fmt: skip

    def _tick(self, state: ControllerState, source: str, elapsed: float) -> None:
        """One physics step with `state` (none while paused), then telemetry, the episode's end."""
        over, info = (False, {}) if self.paused else self._step(state)
        now = time.monotonic()
        if self.telemetry is not None and now >= self._next_sample:
            self.telemetry.write(self._record(elapsed, state, source))
            self._next_sample = max(self._next_sample + 1.0 / TELEMETRY_HZ, now)
        if over:
            self._next_episode(info)

    def _step(self, state: ControllerState) -> tuple[bool, dict[str, object]]:
        _reward, over, info = self.env.apply(state)
        self.distance += self.env.speed / PHYSICS_HZ
        return over, info

    def _handle_events(self) -> bool:
        """Apply the window's events (P pauses or resumes); False once the game should quit."""
        running = True
        for event in pygame.event.get():
            key = event.key if event.type == pygame.KEYDOWN else None
            if event.type == pygame.QUIT or key == pygame.K_ESCAPE:
                running = False
            elif key == PAUSE_KEY:
                self.paused = not self.paused
                log.info("game paused" if self.paused else "game resumed")
        return running

    def _serve_reset_requests(self) -> None:
        # Several requests in one tick are one reset: the car can only be put back once.
        if not self.receiver.take_reset_requests():
            return
        if self.paused:
            log.info("reset request ignored: the game is paused")
            return
        self.env.put_back_on_track()
        self.resets += 1
        log.info("car put back on the track (reset %d)", self.resets)

    def _input(self) -> tuple[ControllerState, str]:
        # Polled even while paused: identity and subscription requests are still answered, and
        # the socket's queue never fills with stale pad states.
        gamepad = self.receiver.poll()
        if self.paused:
            self.suggestion = None
            return NEUTRAL, "none"
        keyboard = keyboard_state(pygame.key.get_pressed())
        # The autopilot keeps tracking the car while the gamepad drives, so it can take over
        # smoothly when the agent goes quiet; only a player at the keyboard pauses it.
        autopilot = None
        if self.autopilot is not None and keyboard is None:
            autopilot = self.autopilot.act(self.env)
        self.suggestion = autopilot
        return choose_input(keyboard, gamepad, autopilot)

    def _follow_tag(self, pad_applied: bool, now: float) -> None:
        """Note the tag of the pad command this tick's physics applied (0 when the pad's state
        was not what it applied), for the frame records."""
        tag = self.receiver.tag if pad_applied else 0
        if tag != self.tag:
            # The receiver's time when this tick's poll first read the tag; this tick's when
            # the pad only now takes over a tag it has been sending (keys released, pause over).
            self.tag, self.tag_since = tag, max(self.receiver.tag_since, now)

    def _next_episode(self, info: dict[str, object]) -> None:
        outcome = "lap finished" if info.get("lap_finished") else "car left the playfield"
        log.info(
            "episode %d over (%s): score %.0f, %.0f%% of tiles",
            self.episode, outcome, self.env.score, 100 * self.env.tiles_fraction,
        )  # fmt: skip
        self.env.reset()
        if self.autopilot is not None:
            self.autopilot.reset()
        self.episode += 1

    def _draw(self, state: ControllerState) -> None:
        draw_view(self.env, self.view, self.screen)
        self.frames += 1
        if self.paused:
            self._draw_banner()
        # After the banner, so a frame number stays readable on a paused picture too.
        if self.options.stamp:
            draw_stamp(self.screen, self.frames)
        pygame.display.flip()
        self.receiver.publish_frame(
            FrameRecord(
                self.frames, self.episode, time.monotonic(), state, self.suggestion,
                self.env.speed, self.paused, self.tag, self.tag_since,
            )
        )  # fmt: skip

    def _draw_banner(self) -> None:
        """PAUSED across the middle of the view, on a dark band a player cannot miss."""
        if self._banner is None:
            self._banner = _pause_banner(self.screen.get_size())
        banner = self._banner.get_rect(center=self.screen.get_rect().center)
        self.screen.blit(self._banner, banner)

    def _record(self, elapsed: float, state: ControllerState, source: str) -> TelemetryRecord:
        return TelemetryRecord(
            t=elapsed,
            episode=self.episode,
            speed=self.env.speed,
            on_track=self.env.on_track,
            score=self.env.score,
            distance=self.distance,
            tiles=self.env.tiles_fraction,
            heading=self.env.heading,
            steering=state.steering,
            accelerate=state.accelerate,
            brake=state.brake,
            source=source,
            paused=self.paused,
            resets=self.resets,
            x=self.env.position[0],
            y=self.env.position[1],
        )


def _pause_banner(size: tuple[int, int]) -> pygame.Surface:
    """A full-width, translucent black band with PAUSED in white, scaled to the view's height."""
    width, height = size
    band = pygame.Surface((width, max(1, height // 5)), pygame.SRCALPHA)
    band.fill((0, 0, 0, 170))
    pygame.font.init()  # CarRacing starts fonts when it draws; this does not rely on that
    font = pygame.font.Font(pygame.font.get_default_font(), max(8, height // 8))
    text = font.render("PAUSED", True, (255, 255, 255))
    band.blit(text, text.get_rect(center=band.get_rect().center))
    return band
