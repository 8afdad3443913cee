"""Hot swap, in process: real networks, a real store on disk, the loader's poll called directly.

The end-to-end tests (a real drive of the bundled game while checkpoints are published) are in
test_drive_swap.py; these pin down each check and the hand-over between loader and loop.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.checkpoints.manifest import WEIGHTS_FILE
from agent.checkpoints.publish import publish
from agent.checkpoints.watcher import SETTLE_SECONDS, CheckpointWatcher
from agent.config import SwapConfig
from agent.drive.hotswap import HotSwap
from agent.inference.predictor import Predictor
from agent.nets.registry import get_line
from tests.helpers.checkpoints import (
    BAD_KINDS,
    LINE,
    lambda_keras_file,
    publish_driver,
    write_every_bad_kind,
    write_slowly,
)
from tests.helpers.clock import FakeClock
from tests.helpers.models import constant_driver

FRAME = np.full(get_line(LINE).input_shape, 120, dtype=np.uint8)


def predictor(throttle: float, steering: float, name: str) -> Predictor:
    return Predictor(constant_driver(throttle, steering, LINE), get_line(LINE), name, warmup_runs=1)


def hot_swap(store: Path, policy: str = "immediate", timeout: float = 60.0) -> HotSwap:
    driving = predictor(0.3, 0.0, "driving")
    shadow = Predictor(get_line(LINE).build("none"), get_line(LINE), "shadow", warmup_runs=1)
    config = SwapConfig(policy=policy, unstuck_timeout=timeout, poll_seconds=0.05, nice=0)
    return HotSwap(store, driving, shadow, 0, config)


def take(swap: HotSwap, driving: Predictor, now: float) -> Predictor | None:
    """What the drive loop does before a prediction: the model that predicts on FRAME, when it
    is not `driving` (a swap happened); None when `driving` goes on."""
    predictor, _prediction = swap.predict(driving, FRAME, now)
    swap._collect_returns()  # what the loader's next poll starts with
    return None if predictor is driving else predictor


def poll_until_taken(swap: HotSwap, polls: int) -> Predictor | None:
    """Poll the store up to `polls` times, as the loader thread would, until a swap happens;
    the model swapped in, or None."""
    driving = predictor(0.3, 0.0, "driving")
    for _ in range(polls):
        swap._poll_once()
        taken = take(swap, driving, 1.0)
        if taken is not None:
            return taken
    return None


def outputs(p: Predictor) -> tuple[float, float]:
    prediction = p.predict(FRAME)
    return round(prediction.throttle, 4), round(prediction.steering, 4)


def test_a_newer_checkpoint_is_loaded_checked_and_taken_between_predictions(tmp_path: Path) -> None:
    swap = hot_swap(tmp_path)
    driving = predictor(0.3, 0.0, "driving")
    assert take(swap, driving, 0.0) is None  # nothing published yet
    publish_driver(tmp_path, 0.5, -0.25)
    swap._poll_once()
    new = take(swap, driving, 1.0)
    assert new is not None and outputs(new) == (0.5, -0.25)
    assert new.name == "pilotnet_small/v0001 (100 batches)"
    assert [s.version for s in swap.history().swaps] == ["v0001"]
    assert swap.history().swaps[0].from_name == "driving"
    # The old copy is the next shadow: the next version is loaded into it, not into `new`.
    publish_driver(tmp_path, -0.5, 0.75)
    swap._poll_once()
    newer = take(swap, new, 2.0)
    assert newer is driving and outputs(newer) == (-0.5, 0.75)
    assert outputs(new) == (0.5, -0.25)  # untouched while it drove
    swap._poll_once()
    assert take(swap, newer, 3.0) is None  # nothing newer: no reload of the same version


def test_each_bad_checkpoint_is_refused_once_and_the_older_good_one_still_swaps_in(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "lambda-ran"
    good = publish_driver(tmp_path, 0.2, 0.4)  # v0001, older than every bad one
    lambda_keras_file(good / "model.keras", marker)  # beside good weights: never opened
    kinds = write_every_bad_kind(tmp_path, 2, tmp_path / "scratch", marker)
    swap = hot_swap(tmp_path)
    taken = poll_until_taken(swap, polls=len(kinds) + 3)
    refused = {r.version: r.reason for r in swap.history().rejections}
    assert sorted(refused) == sorted(kinds)
    for version, kind in kinds.items():
        assert BAD_KINDS[kind].lower() in refused[version].lower(), (kind, refused[version])
        assert "\n" not in refused[version]
    assert taken is not None and outputs(taken) == (0.2, 0.4)
    for _ in range(3):  # refused versions are not tried again while their files stay the same
        swap._poll_once()
    assert len(swap.history().rejections) == len(kinds)
    assert not marker.exists()


def test_newer_versions_whose_arrays_do_not_fit_are_refused_and_the_good_one_swaps_in(
    tmp_path: Path,
) -> None:
    """Damage a manifest cannot show (issue 17, item 15): arrays of the wrong shape, missing
    or extra, and non-finite values, each behind an honest size and SHA-256."""
    import json
    import shutil

    import h5py

    from tests.test_store_damage import DAMAGE, reseal

    good = publish_driver(tmp_path, 0.2, 0.4)  # v0001
    kinds = {"v0002": "nan", "v0003": "extra array", "v0004": "missing array",
             "v0005": "wrong shape"}  # fmt: skip
    for version, damage in kinds.items():
        folder = tmp_path / LINE / version
        shutil.copytree(good, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
        with h5py.File(folder / "model.weights.h5", "a") as file:
            DAMAGE[damage](file)
        reseal(folder)
    swap = hot_swap(tmp_path)
    taken = poll_until_taken(swap, polls=len(kinds) + 3)
    refused = {r.version: r.reason for r in swap.history().rejections}
    assert sorted(refused) == sorted(kinds)
    assert "non-finite" in refused["v0002"]
    assert all("does not fit" in refused[v] for v in ("v0003", "v0004", "v0005")), refused
    assert taken is not None and outputs(taken) == (0.2, 0.4)
    assert [s.version for s in swap.history().swaps] == ["v0001"]


def test_a_checkpoint_written_while_polled_is_never_loaded_half_written(tmp_path: Path) -> None:
    source = publish_driver(tmp_path / "elsewhere", -0.3, 0.6)
    swap = hot_swap(tmp_path)
    driving = predictor(0.3, 0.0, "driving")
    writer = threading.Thread(target=write_slowly, args=(source, tmp_path / LINE / "v0001"))
    writer.start()
    taken = None
    for _ in range(200):
        swap._poll_once()
        taken = take(swap, driving, 1.0)
        if taken is not None:
            break
        threading.Event().wait(0.05)
    writer.join()
    assert taken is not None and outputs(taken) == (-0.3, 0.6)  # the whole checkpoint
    reasons = [r.reason for r in swap.history().rejections]
    assert reasons, "the watcher never looked while the copy was under way"
    # Refused once or twice while it grew (when first seen, and once it looked still), not
    # once per chunk: a copy under way is waited for.
    assert len(reasons) <= 2, reasons


def test_a_newer_version_replaces_one_still_waiting_for_its_turn(tmp_path: Path) -> None:
    swap = hot_swap(tmp_path, policy="manual")
    driving = predictor(0.3, 0.0, "driving")
    publish_driver(tmp_path, 0.1, 0.1)
    swap._poll_once()
    assert take(swap, driving, 1.0) is None  # manual: waits for the hotkey
    publish_driver(tmp_path, 0.7, -0.7)
    swap._poll_once()
    swap.request_manual_swap()
    taken = take(swap, driving, 2.0)
    assert taken is not None and outputs(taken) == (0.7, -0.7)
    assert [s.version for s in swap.history().swaps] == ["v0002"]


@pytest.mark.parametrize("event", ["unstuck", "timeout"])
def test_on_unstuck_applies_at_the_next_unstuck_or_after_its_timeout(
    tmp_path: Path, event: str
) -> None:
    swap = hot_swap(tmp_path, policy="on_unstuck", timeout=30.0)
    driving = predictor(0.3, 0.0, "driving")
    publish_driver(tmp_path, 0.1, 0.2)
    swap._poll_once()
    ready = swap._offer.ready_at if swap._offer else 0.0
    assert take(swap, driving, ready + 1.0) is None
    if event == "unstuck":
        swap.unstuck_started(ready + 2.0)
        taken = take(swap, driving, ready + 2.0)
    else:
        assert take(swap, driving, ready + 29.0) is None
        taken = take(swap, driving, ready + 30.5)
    assert taken is not None and outputs(taken) == (0.1, 0.2)


def test_the_loader_thread_runs_at_a_lower_priority_and_stops(tmp_path: Path) -> None:
    import os
    import sys

    swap = hot_swap(tmp_path)
    swap.config = SwapConfig(poll_seconds=0.05, nice=7)
    seen: list[int] = []
    original = swap._poll_once

    def poll() -> None:
        if not seen and sys.platform.startswith("linux"):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        original()

    swap._poll_once = poll  # type: ignore[method-assign]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    swap.start()
    publish(constant_driver(0.4, 0.4, LINE), tmp_path, LINE, batches=5)
    for _ in range(200):
        if swap._offer is not None:
            break
        threading.Event().wait(0.05)
    swap.stop()
    assert swap._offer is not None and swap.error is None
    assert seen == [min(19, base + 7)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # only the loader thread yields


def test_a_refused_version_is_tried_again_only_after_its_files_stood_still(tmp_path: Path) -> None:
    """The swap's settle rule, on a clock the test moves: a refused version whose files change
    is looked at again once they have not changed for SETTLE_SECONDS, not at every poll while a
    copy is under way."""
    folder = publish_driver(tmp_path, 0.1, 0.2)
    clock = FakeClock()
    watcher = CheckpointWatcher(tmp_path, LINE, 0, clock)
    candidate, _ = watcher.next_candidate()
    assert candidate is not None and candidate.number == 1
    watcher.refuse(candidate.number, candidate.identity, "a made-up reason")
    assert watcher.next_candidate() == (None, [])  # refused and unchanged: never again

    def touch(mtime_ns: int) -> None:
        os.utime(folder / WEIGHTS_FILE, ns=(mtime_ns, mtime_ns))

    touch(1_000_000_000)  # a new copy arrives
    assert watcher.next_candidate() == (None, [])  # just changed: wait
    clock.advance(SETTLE_SECONDS - 0.01)
    touch(2_000_000_000)  # still being written: the wait starts again
    assert watcher.next_candidate() == (None, [])
    clock.advance(SETTLE_SECONDS - 0.01)
    assert watcher.next_candidate() == (None, [])
    clock.advance(0.01)
    again, _ = watcher.next_candidate()
    assert again is not None and again.number == 1
