"""Rounds and medians: how every benchmark that compares settings turns runs into figures.

Settings run interleaved (round 1 of each, then round 2 of each, ...), so a machine that gets
slower or faster during a benchmark touches every setting alike, and each figure is the median
over the rounds of the runs that measured it (a run that could not measure one, None, is left
out of that figure's median, never counted as zero).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

Run = TypeVar("Run")


def interleaved(
    settings: Sequence[str],
    rounds: int,
    measure: Callable[[str, int], Run],
    describe: Callable[[Run], str] | None = None,
) -> dict[str, list[Run]]:
    """Call `measure(setting, round)` for every setting in every round (rounds counted from
    0), round by round; each setting's runs in round order. `describe` makes the progress
    line of a finished run (logged, so stdout stays the benchmark's result)."""
    runs: dict[str, list[Run]] = {setting: [] for setting in settings}
    for number in range(rounds):
        for setting in settings:
            run = measure(setting, number)
            runs[setting].append(run)
            shown = f": {describe(run)}" if describe is not None else ""
            log.info("round %d/%d, %s%s", number + 1, rounds, setting, shown)
    return runs


def median(values: Iterable[float | None], digits: int | None = 2) -> float | None:
    """The median of the values that are not None, rounded to `digits` (None: not rounded);
    None when no value is known."""
    known = [value for value in values if value is not None]
    if not known:
        return None
    middle = statistics.median(known)
    return middle if digits is None else round(middle, digits)


def medians(
    runs: Sequence[Run], figures: Mapping[str, Callable[[Run], float | None]], digits: int = 2
) -> dict[str, float | None]:
    """Each figure's median over `runs`: figure name -> median of `figure(run)`."""
    return {name: median((figure(run) for run in runs), digits) for name, figure in figures.items()}
