"""A pure-pursuit driver for CarRacing that follows the track's centre line.

It reads the track geometry and the car's pose straight from the simulation, never pixels, so it
is a reference driver: it drives the bundled game for tests and demos, and a data collector can
record its laps as labelled driving. Deterministic: the same track and the same car state give
the same commands.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agent.types import ControllerState

# Distance from the rear axle to the front axle of CarRacing's car (WHEELPOS y +80 and -82,
# scaled by SIZE 0.02), in world units (metres).
WHEELBASE = 3.24
# CarRacing's front wheels turn at most 0.4 rad; a steering input maps 1:1 to a target wheel
# angle in radians, so inputs past 0.4 change nothing but how fast the wheel turns there.
MAX_WHEEL_ANGLE = 0.4


class Autopilot:
    """Pure pursuit on the track's centre line, with speed set by the bend ahead.

    Speeds are world units (metres) per second. `cruise` is the speed on straights; in bends the
    target drops with the heading change over the preview distance, down to `corner`.
    """

    def __init__(
        self,
        cruise: float = 38.0,
        corner: float = 18.0,
        lookahead: float = 6.0,
        lookahead_per_speed: float = 0.25,
    ) -> None:
        self.cruise = cruise
        self.corner = corner
        self.lookahead = lookahead
        self.lookahead_per_speed = lookahead_per_speed
        self._track_id = -1
        self._points = np.zeros((0, 2))
        self._headings = np.zeros(0)
        self._nearest = 0

    def reset(self) -> None:
        """Forget the track; the next `act` re-reads it (call after the environment resets)."""
        self._track_id = -1

    def act(self, env: Any) -> ControllerState:
        """The command for the car's current state in a CarRacing environment (or a wrapper)."""
        game = env.unwrapped
        self._load_track(game.track)
        hull = game.car.hull
        position = np.array([hull.position[0], hull.position[1]])
        velocity = hull.linearVelocity
        speed = math.hypot(velocity[0], velocity[1])
        index = self._find_nearest(position)

        steering = self._steer(hull, position, index, speed)
        target = self._target_speed(index, speed)
        accelerate, brake = self._pedals(speed, target)
        return ControllerState(steering=steering, accelerate=accelerate, brake=brake)

    def _load_track(self, track: list[tuple[float, float, float, float]]) -> None:
        # A reset builds a new track list; re-read it then, not every tick.
        if id(track) == self._track_id:
            return
        self._track_id = id(track)
        self._points = np.array([(x, y) for _alpha, _beta, x, y in track], dtype=np.float64)
        steps = np.roll(self._points, -1, axis=0) - self._points
        self._headings = np.arctan2(steps[:, 1], steps[:, 0])
        self._nearest = 0

    def _find_nearest(self, position: np.ndarray) -> int:
        # Search a window around the last match so a track that passes near itself cannot make
        # the car jump to the other branch; search everywhere only when the car is far away.
        count = len(self._points)
        window = (self._nearest + np.arange(-5, 20)) % count
        distances = np.linalg.norm(self._points[window] - position, axis=1)
        best = int(np.argmin(distances))
        if distances[best] > 15.0:
            everywhere = np.linalg.norm(self._points - position, axis=1)
            self._nearest = int(np.argmin(everywhere))
        else:
            self._nearest = int(window[best])
        return self._nearest

    def _point_ahead(self, index: int, position: np.ndarray, distance: float) -> np.ndarray:
        count = len(self._points)
        for step in range(count):
            point = self._points[(index + step) % count]
            if np.linalg.norm(point - position) >= distance:
                return point
        return self._points[(index + 1) % count]

    def _steer(self, hull: Any, position: np.ndarray, index: int, speed: float) -> float:
        reach = self.lookahead + self.lookahead_per_speed * speed
        target = self._point_ahead(index, position, reach)
        # Pure pursuit aims from the rear axle; the hull's origin is near the car's middle.
        forward = np.array([-math.sin(hull.angle), math.cos(hull.angle)])
        rear = position - forward * (WHEELBASE / 2.0)
        to_target = target - rear
        # The car's +x axis points to its right; positive steering turns right.
        right = np.array([forward[1], -forward[0]])
        alpha = math.atan2(float(to_target @ right), float(to_target @ forward))
        wheel = math.atan2(2.0 * WHEELBASE * math.sin(alpha), float(np.linalg.norm(to_target)))
        return float(np.clip(wheel / MAX_WHEEL_ANGLE, -1.0, 1.0))

    def _target_speed(self, index: int, speed: float) -> float:
        # The sharpest heading change within the distance needed to slow down sets the speed.
        preview = 25.0 + 1.2 * speed
        count = len(self._points)
        steps = max(2, int(preview / 3.5))
        ahead = (index + np.arange(steps)) % count
        turn = np.abs(_wrap_array(self._headings[ahead] - self._headings[index]))
        sharpness = min(1.0, float(turn.max()) / (math.pi / 2.0))
        return self.cruise - (self.cruise - self.corner) * sharpness

    @staticmethod
    def _pedals(speed: float, target: float) -> tuple[float, float]:
        error = target - speed
        if error >= 0.0:
            # Half throttle at most: CarRacing's rear wheels spin and the car slides on more.
            return min(0.5, 0.1 * error + 0.1), 0.0
        if error < -3.0:
            return 0.0, min(0.8, -0.05 * error)
        return 0.0, 0.0


def _wrap_array(angles: np.ndarray) -> np.ndarray:
    return (angles + np.pi) % (2.0 * np.pi) - np.pi
