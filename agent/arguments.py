"""Flag types that check a value as argparse parses it (`type=positive_float`).

A mistake in a flag then ends before anything starts, as one line after the usage:

    charles: error: argument --seconds: must be a positive number, not '0'

The commands and the benchmarks' own flags use the same types, so every count and every
duration on the command line is checked by one rule.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from agent.errors import quoted


def positive_float(text: str) -> float:
    """A finite number above zero: seconds, minutes (`0`, `-1`, `nan` and `inf` are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {quoted(text)}")
    return value


def positive_int(text: str) -> int:
    """A whole number above zero: frames, batches, rounds."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {quoted(text)}")
    return value


def int_from_to(low: int, high: int) -> Callable[[str], int]:
    """The type of a whole number from `low` to `high`, both included."""

    def int_in_range(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, not {quoted(text)}"
            )
        return value

    return int_in_range
