"""The newest-value slot and the rate keeper."""

from __future__ import annotations

import threading
import time

from agent.ratekeeper import RateKeeper
from agent.slot import Slot


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
    threading.Timer(0.02, slot.put, args=("b",)).start()
    assert slot.wait_newer(1, timeout=2.0) == ("b", 2)


def test_rate_keeper_holds_the_rate_and_counts_lag() -> None:
    keeper = RateKeeper(hz=50)
    start = time.monotonic()
    for _ in range(10):
        keeper.keep_time()
    elapsed = time.monotonic() - start
    assert 0.18 <= elapsed < 0.5
    assert keeper.lagged == 0
    time.sleep(0.1)  # an overrun of several periods
    assert keeper.keep_time() is True
    assert keeper.lagged == 1
