"""Hot swap: newer checkpoints take over the driving model without the car ever driving blind.

A loader thread watches the store (agent/checkpoints/watcher.py). For each newer version it
fills a second, already compiled copy of the network (the shadow) with the checkpoint's weights,
checks it, and offers it. The drive loop takes an offered shadow between two predictions with
one reference swap and hands the model it drove with back; that copy is the shadow for the next
version. So nothing is ever built, compiled or traced while driving: both copies are built and
warmed up before the first command, and a swap afterwards costs the loop a lock it only tries
and a queue put.

Checks before a checkpoint may drive, each refusal one log line (the version is not tried again
until its files change): a readable manifest of this line and its input shape and outputs
(manifest), size and SHA-256 of the weights (truncated or replaced file), weights that fit the
network exactly and are all finite (agent/nets/weights.py), and a finite prediction on
the newest frame. That last check is the checkpoint's first prediction in the loop, on the frame
it was going to drive on anyway: a separate test prediction in the background would take a whole
prediction's worth of CPU from the driving model on a small machine (measured: the largest gap
between commands during a model_0005 swap was 1.9 x the median with it). A non-finite one is
never sent: the current model predicts on that frame instead and keeps driving.

Only the HDF5 weights file is read, by h5py, as arrays: nothing in a checkpoint folder is
unpickled or deserialised as code, so a `.keras` file with a Lambda layer placed there never
runs. On a small machine the load competes with inference for the CPU, so the loader thread runs
at a lower priority (`swap.nice`, Linux) and within a CPU budget (`swap.load_share`,
agent/runtime/duty.py): the load takes longer, but each prediction beside it overlaps only a
little of it.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agent.checkpoints.load import load_into
from agent.checkpoints.manifest import Checkpoint
from agent.checkpoints.watcher import Candidate, CheckpointWatcher, Rejection
from agent.config import SwapConfig
from agent.errors import ModelError, one_line
from agent.inference.predictor import Predictor
from agent.runtime.clock import SYSTEM_CLOCK, Clock
from agent.runtime.duty import DutyCycle
from agent.runtime.liveness import Failures
from agent.runtime.threads import lower_this_threads_priority
from agent.types import Prediction

log = logging.getLogger(__name__)

PART = "checkpoint loader"
"""How the loader's failure is named in the session's Failures."""


# The policies (swap.policy) are the words of agent.config.SwapPolicy, compared as they are:
# a type checker holds each comparison to that Literal.
@dataclass(frozen=True)
class Swap:
    """One checkpoint that took over."""

    from_name: str
    to_name: str
    version: str
    batches: int
    load_seconds: float
    """Loading and checking it in the background: the time the car did NOT wait."""
    at: float
    """Clock time when the drive loop switched to it."""


@dataclass
class _Offer:
    predictor: Predictor
    candidate: Candidate
    load_seconds: float
    ready_at: float


@dataclass(frozen=True)
class _Return:
    """What the drive loop hands back to the loader: a spare copy, and what became of an offer."""

    spare: Predictor
    offer: _Offer
    refusal: str | None
    """None: the offer drives now; else why its first prediction refused it."""


@dataclass(frozen=True)
class SwapHistory:
    """What the hot swap has done so far. Frozen: each change makes a new one (under the hot
    swap's lock), so the drive loop can hand it to other threads as it is."""

    driving: str
    """The name of the model driving now."""
    swaps: tuple[Swap, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    loads: tuple[tuple[float, float], ...] = ()
    """(start, end) clock times of every background load, accepted or not."""


class HotSwap:
    """Follows the store for newer checkpoints of the driving line and offers them checked.

    The loader thread owns the watcher and fills the spare copy; the drive loop calls only
    `predict`, which never blocks. They meet in two places: the offer (a lock the loop only
    tries, never waits for) and a queue of what the loop hands back (put never blocks).
    """

    def __init__(
        self,
        store: Path,
        driving: Predictor,
        shadow: Predictor,
        driving_number: int,
        config: SwapConfig,
        clock: Clock = SYSTEM_CLOCK,
        failures: Failures | None = None,
    ) -> None:
        self.config = config
        self.watcher = CheckpointWatcher(store, driving.line.name, driving_number, clock)
        self.manual_request = threading.Event()
        self._clock = clock
        self._history = SwapHistory(driving.name)
        self._history_lock = threading.Lock()
        self._lock = threading.Lock()
        self._offer: _Offer | None = None
        self._spare: Predictor | None = shadow
        self._returns: queue.SimpleQueue[_Return] = queue.SimpleQueue()
        self._unstuck_at = -1.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-loader", daemon=True)
        self._failures = failures if failures is not None else Failures()

    @property
    def error(self) -> BaseException | None:
        """The error that ended the loader thread, if one did."""
        return self._failures.of(PART)

    def history(self) -> SwapHistory:
        """Swaps, rejections and loads so far (safe from any thread)."""
        with self._history_lock:
            return self._history

    def _add_to_history(self, **additions: tuple[object, ...] | str) -> None:
        """Append to the history's tuples (and replace `driving`), as one new frozen value."""
        with self._history_lock:
            old = self._history
            changes = {
                name: value if isinstance(value, str) else getattr(old, name) + value
                for name, value in additions.items()
            }
            self._history = replace(old, **changes)

    # --- the drive loop's side (never blocks) ---------------------------------------------

    def predict(
        self, driving: Predictor, model_input: np.ndarray, now: float
    ) -> tuple[Predictor, Prediction]:
        """Predict on `model_input` with the model that should drive now; returns it and its
        prediction.

        Normally that is `driving`. When a checked checkpoint waits and the policy says now,
        its first prediction, on this very frame, is its last check: finite, it drives from
        here on and `driving` goes back to the loader as the next spare; not finite, it is
        refused and `driving` predicts instead (the one case where a swap costs the car time:
        one extra prediction, for a checkpoint that must never drive).
        """
        offer = self._take_offer(now)
        if offer is None:
            return driving, driving.predict(model_input)
        prediction = offer.predictor.predict(model_input)
        if prediction.finite:
            self._returns.put(_Return(driving, offer, None))
            self._note_swap(driving, offer, now)
            return offer.predictor, prediction
        reason = (
            f"checkpoint {offer.candidate.checkpoint.folder} predicts a non-finite value "
            f"(throttle {prediction.throttle}, steering {prediction.steering}) on the newest "
            "frame; it must not drive"
        )
        self._returns.put(_Return(offer.predictor, offer, reason))
        return driving, driving.predict(model_input)

    def _take_offer(self, now: float) -> _Offer | None:
        # Never wait: if the loader holds the lock this instant, the next prediction asks again.
        if not self._lock.acquire(blocking=False):
            return None
        try:
            offer = self._offer
            if offer is None or not self._due(offer, now):
                return None
            self._offer = None
            return offer
        finally:
            self._lock.release()

    def _note_swap(self, driving: Predictor, offer: _Offer, now: float) -> None:
        manifest = offer.candidate.checkpoint.manifest
        swap = Swap(
            driving.name, offer.predictor.name, manifest.version, manifest.batches,
            offer.load_seconds, now,
        )  # fmt: skip
        self._add_to_history(swaps=(swap,), driving=swap.to_name)
        log.info(
            "swapped %s -> %s (loaded and checked in %.2f s while driving)",
            swap.from_name, swap.to_name, swap.load_seconds,
        )  # fmt: skip

    def request_manual_swap(self) -> None:
        """The swap hotkey (swap.policy = "manual"): the waiting checkpoint takes over."""
        if self.config.policy != "manual":
            log.info('swap hotkey ignored: swap.policy is %r, not "manual"', self.config.policy)
            return
        with self._lock:
            waiting = self._offer.predictor.name if self._offer is not None else None
        log.info(
            "swap hotkey: %s", f"swapping in {waiting}" if waiting else
            "no checked checkpoint waiting yet; the next one swaps in when ready",
        )  # fmt: skip
        self.manual_request.set()

    def unstuck_started(self, now: float) -> None:
        """swap.policy = "on_unstuck": a recovery began; a ready checkpoint may take over."""
        self._unstuck_at = now

    def _due(self, offer: _Offer, now: float) -> bool:
        policy = self.config.policy
        if policy == "immediate":
            return True
        if policy == "on_unstuck":
            waited = now - offer.ready_at
            return self._unstuck_at >= offer.ready_at or waited >= self.config.unstuck_timeout
        if policy == "manual" and self.manual_request.is_set():
            self.manual_request.clear()
            return True
        return False

    # --- the loader thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        lower_this_threads_priority(self.config.nice)
        try:
            while not self._clock.wait(self._stopping, self.config.poll_seconds):
                self._poll_once()
        except BaseException as error:  # the drive loop stops on it
            self._failures.report(PART, error)
            log.exception("the checkpoint loader stopped")

    def _poll_once(self) -> None:
        self._collect_returns()
        candidate, refused = self.watcher.next_candidate()
        for rejection in refused:
            self._reject(rejection)
        if candidate is None:
            return
        with self._lock:
            offered = self._offer
            if offered is not None and offered.candidate.number >= candidate.number:
                return  # the newest is already waiting for the policy
            # Take back a shadow the loop has not switched to yet: the newer version wins.
            self._offer = None
            shadow = offered.predictor if offered is not None else self._spare
            self._spare = None
        if shadow is None:
            return  # the loop holds both copies this instant; it hands one back at once
        started = self._clock.now()
        try:
            with DutyCycle(self.config.load_share).limiting():
                self._fill(shadow, candidate.checkpoint)
        except ModelError as error:
            with self._lock:
                self._spare = shadow
            self._reject(
                self.watcher.refuse(candidate.number, candidate.identity, one_line(error, 300))
            )
            return
        finally:
            ended = self._clock.now()
            self._add_to_history(loads=((started, ended),))
        offer = _Offer(shadow, candidate, ended - started, ended)
        with self._lock:
            self._offer = offer
        log.info(
            "%s loaded and checked in %.2f s; %s", shadow.name, offer.load_seconds,
            "swapping it in" if self.config.policy == "immediate" else
            f"waiting to swap ({self.config.policy})",
        )  # fmt: skip

    def _collect_returns(self) -> None:
        """Take back what the drive loop handed over: a spare copy, the version now driving,
        or a refusal of an offer's first prediction."""
        while True:
            try:
                back = self._returns.get_nowait()
            except queue.Empty:
                return
            candidate = back.offer.candidate
            with self._lock:
                self._spare = back.spare
            if back.refusal is None:
                self.watcher.accept(candidate.number)
            else:
                self._reject(self.watcher.refuse(candidate.number, candidate.identity,
                                                 back.refusal))  # fmt: skip

    def _fill(self, shadow: Predictor, checkpoint: Checkpoint) -> None:
        """Load `checkpoint` into `shadow`, checked; ModelError when it may not drive.

        No test prediction here: on a busy CPU it would cost the driving model a prediction's
        worth of time. The checkpoint's first real prediction is that test (see `predict`).
        """
        load_into(shadow.model, checkpoint, shadow.line.name)
        shadow.name = checkpoint.name
        shadow.checkpoint = checkpoint
        # The ONNX backend exports (or reads its cache) and checks here, off the driving path.
        shadow.weights_changed()

    def _reject(self, rejection: Rejection) -> None:
        self._add_to_history(rejections=(rejection,))
        log.warning(
            "rejected checkpoint %s of %s: %s; still driving %s",
            rejection.version, self.watcher.line, rejection.reason, self.history().driving,
        )  # fmt: skip
