"""The `charles` command: the only place that wires objects together.

parser.py builds the commands and their flags (arguments.py: the flag types that check a value
as it is parsed); commands.py holds what each command runs. `main` parses, loads the config
and calls the command. User mistakes end as one `charles: error: ...` line and a non-zero exit
status, never a traceback: a flag's as argparse parses it (after the usage, status 2), any
other when the command meets it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from agent.cli.parser import build_parser, config_overrides
from agent.config import load_config
from agent.errors import CharlesError
from agent.runtime.memory import return_large_blocks_to_the_system
from agent.runtime.signals import EXIT_STATUS, StopRequested


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `charles` console script and `python -m agent`."""
    # TensorFlow's C++ start-up chatter is noise for a user; real errors still surface.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if not args.large_blocks_in_heap:
        # Drives and trainers run for days: large blocks go back to the system.
        return_large_blocks_to_the_system()
    try:
        if args.handler_without_config is not None:
            return int(args.handler_without_config(args) or 0)
        config = load_config(args.config, *config_overrides(args))
        return int(args.handler(args, config) or 0)
    except CharlesError as error:
        print(f"charles: error: {error}", file=sys.stderr)
        if error.end_at_once:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(error.exit_status)
        return error.exit_status
    except StopRequested as stopped:
        print(f"charles: stopped by {stopped.reason} while starting", file=sys.stderr)
        return EXIT_STATUS.get(stopped.reason, 1)
    except KeyboardInterrupt:
        print("charles: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        sys.stderr.close()
        return 0
