"""FloatRing: the newest values, oldest first, in memory taken once."""

import os

import numpy as np
import pytest

from agent.drive.summary import command_gaps, percentiles_ms
from agent.runtime.ring import FloatRing


def test_keeps_the_newest_values_oldest_first() -> None:
    ring = FloatRing(3)
    assert len(ring) == 0 and ring.array().size == 0
    for value in (1.0, 2.0):
        ring.append(value)
    assert list(ring) == [1.0, 2.0] and ring[0] == 1.0 and ring[-1] == 2.0
    for value in (3.0, 4.0, 5.0):
        ring.append(value)
    assert len(ring) == 3
    assert list(ring) == [3.0, 4.0, 5.0]
    assert ring[0] == 3.0 and ring[2] == 5.0 and ring[-1] == 5.0 and ring[-3] == 3.0
    with pytest.raises(IndexError):
        ring[3]
    assert np.asarray(ring).tolist() == [3.0, 4.0, 5.0]


def test_a_copy_read_does_not_change_with_later_appends() -> None:
    ring = FloatRing(2)
    ring.append(1.0)
    copy = ring.array()
    ring.append(2.0)
    ring.append(3.0)
    assert copy.tolist() == [1.0]


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_its_memory_is_taken_when_made() -> None:
    """Every page is written at once, so a ring does not grow the process as it fills (with
    np.empty the OS would hand the pages out one by one, which a soak reads as a leak). 64 MB:
    above glibc's largest mmap threshold, so the ring gets fresh pages, not reused ones."""
    before = _resident_bytes()
    ring = FloatRing(8_000_000)
    taken = _resident_bytes() - before
    assert taken >= 60_000_000, f"only {taken} bytes resident after making a 64 MB ring"
    del ring


def test_the_report_reads_a_ring() -> None:
    ring = FloatRing(4)
    for value in (0.010, 0.020, 0.030, 0.040, 0.050):
        ring.append(value)
    assert percentiles_ms(ring, (50,)) == [35.0]
    assert percentiles_ms(FloatRing(4), (50, 95)) == [None, None]
    gaps = command_gaps(ring.array(), [])
    assert gaps is not None


def test_a_ring_needs_room() -> None:
    with pytest.raises(ValueError):
        FloatRing(0)
