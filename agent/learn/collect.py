"""`charles collect`: labelled samples for training, from the configured source.

- render = "offscreen" (autopilot, dagger): the bundled game simulated and drawn in this
  process, unpaced (`agent.learn.offscreen`);
- render = "window": the game's real window, captured like `charles drive` captures it
  (`agent.learn.window`): the bundled game labels each frame it draws (autopilot, dagger, or a
  person at its keyboard), any other game is labelled by a person's keys (human).

With `--workers N`, N such collectors run in processes of their own (agent/learn/fleet.py).
"""

from __future__ import annotations

from agent.config import Config
from agent.drive.target import is_bundled_game
from agent.errors import ConfigError
from agent.learn.fleet import WorkerCommand, run_fleet
from agent.learn.sink import CollectSummary
from agent.runtime.signals import Stop, on_stop_signals


def run_collect(config: Config, seconds: float | None, frames: int | None) -> CollectSummary:
    """Collect until a stop signal, `seconds` or `frames`; returns the summary."""
    check_collect_settings(config)
    stop = Stop()
    with on_stop_signals(stop.on_signal):
        if config.collect.render == "offscreen":
            from agent.learn.offscreen import collect_offscreen

            return collect_offscreen(config, stop, seconds, frames)
        from agent.learn.window import collect_from_window

        return collect_from_window(config, stop, seconds, frames)


def run_collect_fleet(config: Config, workers: int, command: WorkerCommand) -> CollectSummary:
    """`workers` collectors in processes of their own (agent/learn/fleet.py), each started by
    `command`, until a stop signal or until they all end; the summed summary."""
    check_collect_settings(config)
    stop = Stop()
    with on_stop_signals(stop.on_signal):
        return run_fleet(workers, command, stop, config.collect.source, config.collect.render)


def check_collect_settings(config: Config) -> None:
    """A ConfigError (one line) for settings no collector can work with."""
    source, render = config.collect.source, config.collect.render
    if render == "offscreen" and source == "human":
        raise ConfigError(
            'collect.render = "offscreen" draws the game with nobody at the keyboard; a human '
            'source needs the window: set collect.render = "window"'
        )
    if source != "human" and not is_bundled_game(config):
        raise ConfigError(
            f"collect.source = {source!r} needs the bundled game's autopilot, but game.title is "
            f"{config.game.title!r}; use --source human for other games"
        )
    if source == "dagger" and render == "window" and config.controller.backend != "game":
        raise ConfigError(
            f"collect.source = 'dagger' drives the bundled game through its own gamepad, not "
            f"controller.backend = {config.controller.backend!r}; set controller.backend = "
            '"game" (or use --render offscreen)'
        )
    if (
        render == "offscreen"
        and abs(config.capture.size[0] / config.capture.size[1] - 16 / 9) > 0.01
    ):
        raise ConfigError(
            f"collect.render = 'offscreen' draws the bundled game's 16:9 picture, but "
            f"capture.size is {list(config.capture.size)}; use a 16:9 size such as [1280, 720]"
        )
