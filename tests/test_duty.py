"""The loader's CPU budget: work a slice, then pause, in the limited thread only."""

from __future__ import annotations

import sys
import threading

import pytest

from agent.runtime.duty import SLICE_SECONDS, DutyCycle


def busy(seconds_of_python: int) -> int:
    total = 0
    for n in range(seconds_of_python):
        total += sum(i * i for i in range(2000)) + n
    return total


def test_a_limited_thread_pauses_for_the_rest_of_its_share() -> None:
    duty = DutyCycle(0.25)
    with duty.limiting():
        assert sys.getprofile() is not None
        busy(40)  # about 0.1 s of work under the hook: some 25 slices, 0.4 s of pauses
    assert sys.getprofile() is None  # the hook is gone afterwards
    assert duty.worked > 4 * SLICE_SECONDS  # enough work for several pauses
    # Paused three times as long as it worked, less the last slice (no pause after it).
    assert duty.slept >= 3.0 * (duty.worked - SLICE_SECONDS) * 0.95


def test_only_the_limited_thread_is_slowed() -> None:
    seen: list[object] = []
    duty = DutyCycle(0.5)

    def other() -> None:
        seen.append(sys.getprofile())

    with duty.limiting():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == [None]


def test_share_one_is_no_limit_and_nonsense_is_refused() -> None:
    duty = DutyCycle(1.0)
    with duty.limiting():
        assert sys.getprofile() is None
        busy(50)
    assert duty.slept == 0.0
    for share in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError):
            DutyCycle(share)
