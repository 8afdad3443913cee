"""`python -m agent.game`: the bundled game on its own, for playing or for an agent to drive."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agent.errors import CharlesError, DependencyError
from agent.game.options import GameOptions, add_game_arguments, options_from_args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m agent.game",
        description="CarRacing in a window titled 'Charles CarRacing': arrows/WASD, the "
        "virtual gamepad, or --autopilot drive; P pauses, Esc quits.",
    )
    add_game_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_game_or_explain(options_from_args(args))
    except CharlesError as error:
        print(f"charles: error: {error}", file=sys.stderr)
        return error.exit_status


def run_game_or_explain(options: GameOptions) -> int:
    # Imported late so `--help` and option errors answer even where the game's packages are
    # missing; gymnasium's own missing-Box2D error is an ImportError too.
    try:
        from agent.game.host import run_game
    except ImportError as error:
        raise DependencyError(
            f"the bundled game cannot load ({error}); install it: pip install 'gymnasium[box2d]'"
        ) from None
    return run_game(options)


if __name__ == "__main__":
    raise SystemExit(main())
