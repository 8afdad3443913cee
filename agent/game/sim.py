"""CarRacing as the host runs it, and the few facts about the car that telemetry reports.

The host never reads CarRacing's observations (the agent sees the window, like any game), so
this subclass skips the 96x96 observation that CarRacing draws on every physics step: that
drawing costs about 12 ms, the physics about 0.1 ms. `render()` then draws only when the window
wants a picture, and hands over the full 1000x800 pygame surface (not the 600x400 array, which
is squashed vertically and costs another scale and copy).

Two things CarRacing's car cannot do and a game's car can: back up (the brake, held at a
standstill with the accelerator up, drives the rear wheels backwards, as in GTA V) and be put
back on the track (`put_back_on_track`, the game's answer to a reset request).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pygame
from gymnasium.envs.box2d.car_dynamics import ENGINE_POWER, WHEEL_MOMENT_OF_INERTIA, Car
from gymnasium.envs.box2d.car_racing import (
    FPS,
    GRASS_DIM,
    PLAYFIELD,
    TRACK_DETAIL_STEP,
    TRACK_WIDTH,
    WINDOW_H,
    WINDOW_W,
    CarRacing,
)

from agent.types import ControllerState

PHYSICS_HZ = float(FPS)
"""CarRacing's fixed physics rate: every `step()` advances the world by 1 / PHYSICS_HZ seconds."""

PICTURE_SIZE = (WINDOW_W, WINDOW_H)
"""Size of the surface `render()` returns, in pixels (width, height)."""

# CarRacing draws its indicator bar (speed, ABS, score) along the bottom eighth of the picture.
_HUD_HEIGHT = WINDOW_H // 8

SPEEDOMETER_BOX = (10, WINDOW_H - _HUD_HEIGHT - 45, 340, 36)
"""(left, top, width, height) of the speed bar in the picture: bottom-left of the view."""
SPEEDOMETER_PX_PER_MPS = 5.0
"""Bar length per m/s: 332 px of bar hold 66 m/s, faster than the car gets."""

REVERSE_BELOW_SPEED = 1.0
"""Forward speed (m/s) under which a held brake, with the accelerator up, backs the car up."""
REVERSE_TOP_SPEED = 5.0
"""Reverse gear's top speed, m/s: the rear wheels get no reverse power past it."""
REVERSE_POWER = 0.1
"""Engine power in reverse at full brake, as a fraction of full throttle: a gentle reverse
that reaches its top speed in well under a second (full throttle passes 40 m/s in one)."""

# CarRacing's background: the playfield square and a 20x20 checkerboard of grass patches, in
# world units, the same for every track (as CarRacing._render_road builds them each frame).
_FIELD = [
    (PLAYFIELD, PLAYFIELD),
    (PLAYFIELD, -PLAYFIELD),
    (-PLAYFIELD, -PLAYFIELD),
    (-PLAYFIELD, PLAYFIELD),
]
_GRASS = [
    [
        (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y),
        (GRASS_DIM * x, GRASS_DIM * y),
        (GRASS_DIM * x, GRASS_DIM * y + GRASS_DIM),
        (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + GRASS_DIM),
    ]
    for x in range(-20, 20, 2)
    for y in range(-20, 20, 2)
]
_GRASS_CENTRES = np.array(_GRASS).mean(axis=1)
# No road or grass polygon reaches further than this from its centre, in world units.
_SHAPE_RADIUS = max(GRASS_DIM, TRACK_WIDTH, TRACK_DETAIL_STEP) * math.sqrt(2)


def view_rect(aspect: float = 16 / 9) -> pygame.Rect:
    """The part of the picture the window shows: full width, `aspect`, ending above the HUD.

    The car sits three quarters of the way down the picture facing up, so this keeps the road
    ahead (about 28 m) and the car itself, and drops the indicator bar, which no game camera has.
    """
    height = min(round(WINDOW_W / aspect), WINDOW_H - _HUD_HEIGHT)
    width = min(WINDOW_W, round(height * aspect))
    return pygame.Rect((WINDOW_W - width) // 2, WINDOW_H - _HUD_HEIGHT - height, width, height)


class HostedCarRacing(CarRacing):
    """CarRacing with no per-step observation and a full-size `pygame.Surface` from `render()`.

    `step()` and `reset()` return None as the observation. Construct it directly (not through
    `gym.make`), which also leaves out CarRacing-v3's 1000-step time limit: a game episode ends
    when the lap is done or the car leaves the playfield, not after 20 seconds.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(render_mode="rgb_array", **kwargs)

    def _render(self, mode: str) -> Any:
        if mode == "state_pixels":
            return None
        return super()._render(mode)

    def _render_indicators(self, W: int, H: int) -> None:
        super()._render_indicators(W, H)
        # The speedometer the window shows. A driver cannot choose its pedals without knowing
        # its speed, and CarRacing's own indicator bar is outside the view (it also shows the
        # steering input, which a model would learn to copy); this shows speed alone.
        box = pygame.Rect(SPEEDOMETER_BOX)
        pygame.draw.rect(self.surf, (0, 0, 0), box)
        length = min(box.width - 8, round(SPEEDOMETER_PX_PER_MPS * self.speed))
        if length > 0:
            bar = pygame.Rect(box.left + 4, box.top + 4, length, box.height - 8)
            pygame.draw.rect(self.surf, (255, 255, 255), bar)

    def _render_road(self, zoom: float, translation: Any, angle: float) -> None:
        # CarRacing's own road drawing walks all ~800 polygons in Python every frame to find the
        # few dozen on screen; this hands over only those near the car (same calls, same order,
        # same picture) and halves the cost of a redraw.
        surface = self.surf
        self._draw_colored_polygon(
            surface, _FIELD, self.bg_color, zoom, translation, angle, clip=False
        )
        car = np.array([self.car.hull.position[0], self.car.hull.position[1]])
        # The car is inside the picture, so nothing further than its diagonal can be on it.
        reach = math.hypot(WINDOW_W, WINDOW_H) / zoom + _SHAPE_RADIUS
        for index in _near(_GRASS_CENTRES, car, reach):
            self._draw_colored_polygon(
                surface, _GRASS[index], self.grass_color, zoom, translation, angle
            )
        for index in _near(self._road_centres(), car, reach):
            poly, color = self.road_poly[index]
            self._draw_colored_polygon(
                surface, poly, [int(c) for c in color], zoom, translation, angle
            )

    def _road_centres(self) -> np.ndarray:
        # reset() builds a new road_poly list; its centres are computed once per track.
        if getattr(self, "_centres_of", None) is not self.road_poly:
            self._centres_of = self.road_poly
            self._centres = np.array([np.mean(poly, axis=0) for poly, _color in self.road_poly])
        return self._centres

    def _create_image_array(self, screen: pygame.Surface, size: tuple[int, int]) -> Any:
        return screen

    def apply(self, state: ControllerState) -> tuple[float, bool, dict[str, Any]]:
        """One physics step with `state` as the input; returns (reward, episode over, info).

        The brake backs the car up when the car is (nearly) stopped or already backing up and
        the accelerator is up; otherwise CarRacing's own controls, untouched.
        """
        brake = state.brake
        if self._reverses(state):
            self._drive_backwards(state.brake)
            brake = 0.0  # CarRacing's brake would stop the wheels just spun backwards
        action = np.array([state.steering, state.accelerate, brake], dtype=np.float64)
        _obs, reward, terminated, truncated, info = self.step(action)
        return float(reward), bool(terminated or truncated), info

    def _reverses(self, state: ControllerState) -> bool:
        # Only a car that is (nearly) stopped or already backing up: a moving car brakes.
        stopped = self.forward_speed < REVERSE_BELOW_SPEED
        return state.brake > 0.0 and state.accelerate == 0.0 and stopped

    def _drive_backwards(self, brake: float) -> None:
        """Spin the rear wheels backwards with CarRacing's engine formula, up to top speed.

        `Car.gas` clips gas to [0, 1], so the engine cannot be asked for this; the spin is added
        just before the physics step, where `Car.step` adds the engine's, and the step's tyre
        grip then pulls the car backwards as it pulls it forwards on the accelerator.
        """
        dt = 1.0 / PHYSICS_HZ
        for wheel in self.car.wheels[2:4]:  # rear-wheel drive, like the accelerator
            top = -REVERSE_TOP_SPEED / wheel.wheel_rad
            if wheel.omega <= top:
                continue  # at top speed: no more power, the car rolls on
            power = ENGINE_POWER * REVERSE_POWER * brake
            spin = dt * power / WHEEL_MOMENT_OF_INERTIA / (abs(wheel.omega) + 5.0)
            wheel.omega = max(wheel.omega - spin, top)

    def put_back_on_track(self) -> None:
        """Put the car at rest on the nearest track point, facing the driving direction.

        Same episode: score, visited tiles and the clock stay. The car is rebuilt the way
        CarRacing.reset builds it on the start line (a new `Car` at the point, turned to the
        point's angle, which faces the driving direction), so no velocity, wheel spin or
        steering angle is left behind.
        """
        position = np.array([self.car.hull.position[0], self.car.hull.position[1]])
        points = np.array([(x, y) for _alpha, _beta, x, y in self.track])
        nearest = int(np.argmin(np.hypot(*(points - position).T)))
        _alpha, beta, x, y = self.track[nearest]
        self.car.destroy()
        self.car = Car(self.world, beta, x, y)

    @property
    def speed(self) -> float:
        """Speed of the car's hull, world units (metres) per second.

        Never negative, backing up too: `forward_speed` has the sign.
        """
        velocity = self.car.hull.linearVelocity
        return math.hypot(velocity[0], velocity[1])

    @property
    def forward_speed(self) -> float:
        """The hull's velocity along its nose, m/s: negative while the car backs up."""
        hull = self.car.hull
        nose = hull.GetWorldVector((0.0, 1.0))
        velocity = hull.linearVelocity
        return float(nose[0] * velocity[0] + nose[1] * velocity[1])

    @property
    def position(self) -> tuple[float, float]:
        """The hull's centre in world units (metres)."""
        return float(self.car.hull.position[0]), float(self.car.hull.position[1])

    @property
    def heading(self) -> float:
        """The hull's angle in radians, counter-clockwise, not wrapped."""
        return float(self.car.hull.angle)

    @property
    def on_track(self) -> bool:
        """True while any wheel touches a road tile."""
        return any(wheel.tiles for wheel in self.car.wheels)

    @property
    def tiles_fraction(self) -> float:
        """Fraction of this track's tiles the car has visited, in [0, 1]."""
        return self.tile_visited_count / len(self.track) if self.track is not None else 0.0

    @property
    def score(self) -> float:
        """CarRacing's cumulative reward this episode (1000 / tiles per new tile, -0.1 a step)."""
        return float(self.reward)


def _near(centres: np.ndarray, point: np.ndarray, reach: float) -> np.ndarray:
    """Indices (ascending) of the centres closer than `reach` to `point`."""
    return np.flatnonzero(np.hypot(*(centres - point).T) < reach)
