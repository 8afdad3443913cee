"""`charles model ...` as a user runs it."""

from __future__ import annotations

import json

from tests.conftest import assert_one_line_error


def test_summary_prints_the_seed_numbers_for_model_0005(run_charles) -> None:
    result = run_charles("model", "summary", "--model", "model_0005_inceptionresnetv2")
    assert result.returncode == 0, result.stderr
    assert "Total params: 56,470,434" in result.stdout
    assert "Trainable params: 56,409,890" in result.stdout
    assert "Non-trainable params: 60,544" in result.stdout


def test_bench_reports_rate_and_percentiles_as_json(run_charles) -> None:
    result = run_charles(
        "model", "bench", "--model", "pilotnet_small", "--seconds", "1", "--json",
        "--checkpoint", "none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["predictions"] >= 1
    assert report["predictions_per_second"] > 0
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"]
    assert report["model"].startswith("pilotnet_small")


def test_bench_refuses_nonsense_arguments(run_charles) -> None:
    result = run_charles("model", "bench", "--seconds", "0", "--checkpoint", "none")
    assert_one_line_error(result, "--seconds must be > 0")
