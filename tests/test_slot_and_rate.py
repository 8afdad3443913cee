"""The newest-value slot and the rate keeper."""

from __future__ import annotations

import threading
import time

import pytest

from agent.runtime.ratekeeper import RateKeeper
from agent.runtime.slot import Slot


def test_slot_keeps_only_the_newest_value() -> None:
    slot: Slot[int] = Slot()
    assert slot.get() == (None, 0)
    for value in range(5):
        slot.put(value)
    assert slot.get() == (4, 5)


def test_wait_newer_returns_on_put_and_times_out_without_one() -> None:
    slot: Slot[str] = Slot()
    slot.put("a")
    start = time.monotonic()
    assert slot.wait_newer(1, timeout=0.05) == ("a", 1)
    assert time.monotonic() - start >= 0.04
    # A put wakes the waiter at once: long before the generous timeout would end the wait.
    threading.Timer(0.02, slot.put, args=("b",)).start()
    start = time.monotonic()
    assert slot.wait_newer(1, timeout=5.0) == ("b", 2)
    assert time.monotonic() - start < 1.0, "put() did not wake the waiter"
    # A value newer than `seq` is returned without waiting at all.
    start = time.monotonic()
    assert slot.wait_newer(0, timeout=5.0) == ("b", 2)
    assert time.monotonic() - start < 0.5


def test_rate_keeper_holds_the_rate_and_counts_lag() -> None:
    keeper = RateKeeper(hz=50)
    start = time.monotonic()
    for _ in range(10):
        keeper.keep_time()
    elapsed = time.monotonic() - start
    assert 0.18 <= elapsed < 0.3  # 10 ticks of 20 ms
    assert (keeper.ticks, keeper.lagged) == (10, 0)
    time.sleep(0.1)  # an overrun of several periods
    assert keeper.keep_time() is True
    time.sleep(0.1)
    assert keeper.keep_time() is True
    assert (keeper.ticks, keeper.lagged) == (12, 2)


def test_a_tick_a_little_late_keeps_the_grid() -> None:
    """Less than one period late: not a lag, and the next tick is back on the grid."""
    keeper = RateKeeper(hz=50)
    keeper.keep_time()
    time.sleep(0.03)  # the tick due at +40 ms comes at about +50 ms
    assert keeper.keep_time() is False
    start = time.monotonic()
    assert keeper.keep_time() is False  # due at +60 ms: about 10 ms from now
    assert time.monotonic() - start < 0.018
    assert keeper.lagged == 0


@pytest.mark.parametrize("hz", [0, -5, float("nan")])
def test_rate_keeper_refuses_a_rate_that_is_not_positive(hz: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        RateKeeper(hz)


def test_a_slow_rate_is_a_long_period() -> None:
    assert RateKeeper(0.5).period == 2.0


def test_rate_keeper_does_not_burst_to_catch_up_after_a_lag() -> None:
    """After an overrun the grid restarts from now: the next ticks keep their spacing."""
    keeper = RateKeeper(hz=50)
    keeper.keep_time()
    time.sleep(0.12)  # six periods late
    assert keeper.keep_time() is True
    start = time.monotonic()
    late = [keeper.keep_time() for _ in range(3)]
    elapsed = time.monotonic() - start
    assert late == [False, False, False]
    # Three ticks at 50 Hz take 60 ms; a burst of catch-up ticks would return at once.
    assert elapsed >= 0.05, f"3 ticks in {elapsed * 1000:.0f} ms: the keeper burst"
    assert keeper.lagged == 1
