"""`charles bench model`: predictions per second and latency percentiles at batch 1, the
model alone (no game, no capture) on `inference.backend`."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from agent.arguments import positive_float, positive_int
from agent.config import Config
from agent.inference.predictor import Predictor


@dataclass(frozen=True)
class BenchResult:
    """What `charles bench model` reports; times in seconds unless named `_ms`."""

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model benchmark's own flags (--config, --set, the model flags and --json come from
    the CLI)."""
    parser.add_argument(
        "--seconds", type=positive_float, default=10.0, help="measuring time (default 10)"
    )
    parser.add_argument(
        "--max-predictions",
        type=positive_int,
        default=100_000,
        help="stop after this many predictions",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench model` handler: load the checkpoint `charles drive` would drive
    with (the shipped reference while the store is empty), measure, report."""
    from agent.checkpoints.reference import checkpoint_to_drive
    from agent.inference.onnx_backend import check_installed
    from agent.nets.runtime import configure_threads

    check_installed(config.inference)
    configure_threads(config.inference)  # before anything builds the line (a pinned version)
    checkpoint = checkpoint_to_drive(config)
    start = time.perf_counter()
    predictor = Predictor.load(
        config.model.line, checkpoint, config.model.pretrained, inference=config.inference
    )
    load_seconds = time.perf_counter() - start - predictor.warmup_seconds
    result = run_bench(predictor, args.seconds, args.max_predictions, load_seconds)
    if args.json:
        print(
            json.dumps({**asdict(result), "predictions_per_second": result.predictions_per_second})
        )
    else:
        print_table(result)
    return 0


def print_table(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"charles bench model: {result.model} on {result.backend}, batch 1")
    columns = ("predictions", "PPS", "p50 ms", "p95 ms", "p99 ms", "mean ms", "load s",
               "warm-up s")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(
        str(result.predictions),
        f"{result.predictions_per_second:.1f}",
        f"{result.p50_ms:.1f}",
        f"{result.p95_ms:.1f}",
        f"{result.p99_ms:.1f}",
        f"{result.mean_ms:.1f}",
        f"{result.load_seconds:.2f}",
        f"{result.warmup_seconds:.2f}",
    )
    Console().print(table)
