"""Inference benchmark: predictions per second and latency percentiles at batch 1."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agent.inference.predictor import Predictor


@dataclass(frozen=True)
class BenchResult:
    """What `charles model bench` reports; times in seconds unless named `_ms`."""

    model: str
    backend: str
    predictions: int
    seconds: float
    load_seconds: float
    warmup_seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def predictions_per_second(self) -> float:
        return self.predictions / self.seconds


def run_bench(
    predictor: Predictor, seconds: float, max_predictions: int, load_seconds: float
) -> BenchResult:
    """Predict on random frames until `seconds` pass or `max_predictions` are done.

    Latency is each call's wall time (frame in, floats out); PPS is calls over total time.
    Frames differ from call to call so nothing can be served from a cache.
    """
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(8, *predictor.line.input_shape), dtype=np.uint8)
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    while len(latencies) < max_predictions and (not latencies or time.perf_counter() < deadline):
        latencies.append(predictor.predict(frames[len(latencies) % len(frames)]).seconds)
    total = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return BenchResult(
        model=predictor.name,
        backend=predictor.backend,
        predictions=len(latencies),
        seconds=total,
        load_seconds=load_seconds,
        warmup_seconds=predictor.warmup_seconds,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
    )
