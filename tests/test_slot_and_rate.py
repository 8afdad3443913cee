"""The newest-value slot and the rate keeper (its schedule on a fake clock)."""

from __future__ import annotations

import threading
import time

import pytest

from agent.runtime.ratekeeper import RateKeeper
from agent.runtime.slot import Slot
from tests.helpers.clock import FakeClock
from tests.helpers.waiting import wait_until, waiting_in


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
    assert time.monotonic() - start >= 0.04  # it waited (a lower bound: load cannot break it)
    # A waiter already waiting is woken by a put: without that it would wait a minute.
    woken: list[tuple[str | None, int]] = []
    waiter = threading.Thread(target=lambda: woken.append(slot.wait_newer(1, timeout=60.0)))
    waiter.start()
    assert wait_until(lambda: waiting_in(waiter, threading.Condition.wait))
    slot.put("b")
    waiter.join(10.0)
    assert woken == [("b", 2)], "put() did not wake the waiter"
    # A value newer than `seq` is returned without waiting at all (a minute, else).
    assert slot.wait_newer(0, timeout=60.0) == ("b", 2)


class OversleepingClock(FakeClock):
    """Its sleeps end 1 ms after their deadline, as real ones do: a little late, never early."""

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds + 0.001)


def test_rate_keeper_holds_the_grid_and_counts_lag() -> None:
    clock = OversleepingClock(waits_advance=True)
    start = clock.now()
    keeper = RateKeeper(hz=50, clock=clock)
    for tick in range(1, 11):
        clock.advance(0.007)  # the loop's work: the sleep takes only what is left of the period
        assert keeper.keep_time() is False
        # On the grid, each tick as late as one sleep: the lateness does not add up.
        assert clock.now() == pytest.approx(start + tick * 0.02 + 0.001)
    assert (keeper.ticks, keeper.lagged) == (10, 0)
    clock.advance(0.1)  # an overrun of several periods
    assert keeper.keep_time() is True
    assert clock.now() == pytest.approx(start + 0.301)  # a late tick does not sleep
    clock.advance(0.1)
    assert keeper.keep_time() is True
    assert (keeper.ticks, keeper.lagged) == (12, 2)


def test_a_tick_a_little_late_keeps_the_grid() -> None:
    """Less than one period late: not a lag, and the next tick is back on the grid."""
    clock = FakeClock(waits_advance=True)
    start = clock.now()
    keeper = RateKeeper(hz=50, clock=clock)
    keeper.keep_time()
    clock.advance(0.03)  # the tick due at +40 ms comes at +50 ms
    assert keeper.keep_time() is False
    assert clock.now() == pytest.approx(start + 0.05)
    assert keeper.keep_time() is False
    assert clock.now() == pytest.approx(start + 0.06)  # due at +60 ms: on the grid again
    assert keeper.lagged == 0


@pytest.mark.parametrize("hz", [0, -5, float("nan")])
def test_rate_keeper_refuses_a_rate_that_is_not_positive(hz: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        RateKeeper(hz)


def test_a_slow_rate_is_a_long_period() -> None:
    assert RateKeeper(0.5).period == 2.0


def test_rate_keeper_does_not_burst_to_catch_up_after_a_lag() -> None:
    """After an overrun the grid restarts from now: the next ticks keep their spacing."""
    clock = FakeClock(waits_advance=True)
    keeper = RateKeeper(hz=50, clock=clock)
    keeper.keep_time()
    clock.advance(0.12)  # six periods late
    assert keeper.keep_time() is True
    lagged_at = clock.now()
    for tick in range(1, 4):
        # A burst of catch-up ticks would return at once, without time moving.
        assert keeper.keep_time() is False
        assert clock.now() == pytest.approx(lagged_at + tick * 0.02)
    assert keeper.lagged == 1


def test_a_wake_ends_the_wait_at_once_and_restarts_the_grid() -> None:
    clock = FakeClock()
    keeper = RateKeeper(hz=10, clock=clock)
    start = clock.now()
    wake = threading.Event()
    ticked: list[float] = []

    def loop() -> None:
        for _ in range(2):
            keeper.keep_time(wake)
            wake.clear()
            ticked.append(clock.now())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    clock.settle(waiters=1)
    clock.advance(0.03)
    assert ticked == []
    wake.set()
    clock.settle()
    assert ticked == [start + 0.03]  # woken at once, not at the tick due at +0.1
    clock.advance(0.0999)
    assert len(ticked) == 1  # the grid restarted from the wake: the next tick is at +0.13
    clock.advance(0.0002)
    thread.join(5.0)
    assert ticked[1] == pytest.approx(start + 0.13)
    assert (keeper.ticks, keeper.lagged) == (2, 0)
