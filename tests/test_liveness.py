"""The failures board: helper threads report why they stopped; the session reads one place."""

from __future__ import annotations

import threading

from agent.runtime.liveness import Failures


def test_the_first_failure_is_kept_and_each_part_reports_once() -> None:
    failures = Failures()
    assert failures.first() is None and failures.of("capture") is None
    lost = RuntimeError("lost the X display")
    failures.report("capture", lost)
    failures.report("hotkeys", ValueError("listener died"))
    failures.report("capture", OSError("a later error of the same part"))
    first = failures.first()
    assert first is not None and (first.part, first.error) == ("capture", lost)
    assert failures.of("capture") is lost
    assert isinstance(failures.of("hotkeys"), ValueError)
    assert failures.of("checkpoint loader") is None


def test_reports_from_many_threads_at_once_are_all_kept() -> None:
    failures = Failures()
    parts = [f"part {n}" for n in range(32)]
    threads = [
        threading.Thread(target=failures.report, args=(part, RuntimeError(part))) for part in parts
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(str(failures.of(part)) for part in parts) == sorted(parts)
    first = failures.first()
    assert first is not None and str(first.error) == first.part
