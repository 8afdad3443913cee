"""Balancing v3: the bins of each output, the balancer's keep rule and its histogram picture."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.learn.balance import (
    BINS_BY_OUTPUT,
    HISTOGRAM_PANEL_HEIGHT,
    HISTOGRAM_WIDTH,
    STEERING_BINS,
    THROTTLE_BINS,
    Balancer,
    Bins,
    write_histogram_png,
)
from agent.nets.registry import OUTPUT_NAMES


def _label(bins: Bins, value: float) -> str:
    return bins.labels[bins.index(value)]


def _inside(label: str) -> float:
    """A value that lies in the bin `label`: the middle of an interval, or the exact value."""
    if label.startswith("("):
        low, high = (float(x) for x in label.strip("()").split(","))
        return (low + high) / 2
    return float(label)


# --- bins ------------------------------------------------------------------------------------


def test_bin_layouts() -> None:
    assert len(THROTTLE_BINS) == len(THROTTLE_BINS.labels) == 23
    assert len(STEERING_BINS) == len(STEERING_BINS.labels) == 21
    for bins in (THROTTLE_BINS, STEERING_BINS):
        assert len(set(bins.labels)) == len(bins)
        assert bins.labels[len(bins) // 2] == "0.0"  # symmetric around the centre bin
    assert THROTTLE_BINS.labels[:2] == ("-1.0", "(-1.0,-0.9)")
    assert THROTTLE_BINS.labels[-2:] == ("(0.9,1.0)", "1.0")
    assert STEERING_BINS.labels[0] == "(-1.0,-0.9)" and STEERING_BINS.labels[-1] == "(0.9,1.0)"
    assert tuple(BINS_BY_OUTPUT) == OUTPUT_NAMES
    assert BINS_BY_OUTPUT["throttle"] is THROTTLE_BINS
    assert BINS_BY_OUTPUT["steering"] is STEERING_BINS


@pytest.mark.parametrize(
    ("value", "throttle", "steering"),
    [
        (0.0, "0.0", "0.0"),
        (-0.0, "0.0", "0.0"),
        (1.0, "1.0", "(0.9,1.0)"),
        (-1.0, "-1.0", "(-1.0,-0.9)"),
        (0.05, "(0.0,0.1)", "(0.0,0.1)"),
        (-0.05, "(-0.1,0.0)", "(-0.1,0.0)"),
        (1e-9, "(0.0,0.1)", "(0.0,0.1)"),
        (-1e-9, "(-0.1,0.0)", "(-0.1,0.0)"),
        (0.1, "(0.1,0.2)", "(0.1,0.2)"),
        (-0.1, "(-0.2,-0.1)", "(-0.2,-0.1)"),
        (0.5, "(0.5,0.6)", "(0.5,0.6)"),
        (0.9, "(0.9,1.0)", "(0.9,1.0)"),
        (-0.9, "(-1.0,-0.9)", "(-1.0,-0.9)"),
        (0.95, "(0.9,1.0)", "(0.9,1.0)"),
        (0.999, "(0.9,1.0)", "(0.9,1.0)"),
        (-0.999, "(-1.0,-0.9)", "(-1.0,-0.9)"),
        (0.3, "(0.3,0.4)", "(0.3,0.4)"),  # 0.3 * 10 is 3.0000000000000004 in floating point
        (0.7, "(0.7,0.8)", "(0.7,0.8)"),  # 0.7 * 10 is 7.000000000000001
    ],
)
def test_edge_values(value: float, throttle: str, steering: str) -> None:
    assert _label(THROTTLE_BINS, value) == throttle
    assert _label(STEERING_BINS, value) == steering


@pytest.mark.parametrize("bins", [THROTTLE_BINS, STEERING_BINS], ids=lambda b: b.name)
def test_every_bin_takes_its_own_values(bins: Bins) -> None:
    for index, label in enumerate(bins.labels):
        assert bins.index(_inside(label)) == index, label
    for tenth in range(1, 10):  # an interior edge belongs to the bin above it in magnitude
        assert bins.labels[bins.index(tenth / 10)].startswith(f"({tenth / 10:.1f},")
        assert bins.labels[bins.index(-tenth / 10)].endswith(f",{-tenth / 10:.1f})")


@pytest.mark.parametrize("bins", [THROTTLE_BINS, STEERING_BINS], ids=lambda b: b.name)
def test_float32_labels_bin_like_the_values_they_store(bins: Bins) -> None:
    """Shards store float32, where 0.7 is 0.69999999: it must stay in (0.7,0.8)."""
    edges = np.arange(-10, 11) / 10
    assert np.array_equal(bins.indices(edges.astype(np.float32)), bins.indices(edges))
    assert bins.index(float(np.float32(0.7))) == bins.index(0.7)


@pytest.mark.parametrize("bins", [THROTTLE_BINS, STEERING_BINS], ids=lambda b: b.name)
def test_indices_is_index_vectorised(bins: Bins) -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [rng.uniform(-1, 1, 500), np.arange(-10, 11) / 10, [1e-9, -1e-9, 0.999, -0.999, -0.0]]
    )
    expected = np.array([bins.index(float(v)) for v in values])
    got = bins.indices(values)
    assert got.dtype == np.int64 and got.shape == values.shape
    assert np.array_equal(got, expected)
    assert set(got.tolist()) == set(range(len(bins)))  # the sample reaches every bin


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1.01, -1.5])
def test_values_outside_minus_one_to_one_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        THROTTLE_BINS.index(bad)
    with pytest.raises(ValueError):
        STEERING_BINS.indices(np.array([0.2, bad]))


# --- the balancer ----------------------------------------------------------------------------


def _driving_stream(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """90% straight ahead at full throttle; the rest spread over corners, braking, coasting."""
    rng = np.random.default_rng(seed)
    straight = rng.random(n) < 0.9
    throttle = np.where(straight, 1.0, rng.uniform(-1, 1, n))
    steering = np.where(straight, 0.0, rng.uniform(-0.8, 0.8, n))
    return throttle, steering


def test_kept_set_is_much_more_even_than_the_stream() -> None:
    throttle, steering = _driving_stream(20_000)
    balancer = Balancer(ratio=2.0)
    balancer.offer_many(throttle, steering)
    for name in OUTPUT_NAMES:
        seen, kept = balancer.seen(name), balancer.kept(name)
        assert seen.sum() == 20_000
        present = seen > 0
        assert (kept <= seen).all()
        seen_skew = seen.max() / seen[present].mean()
        kept_skew = kept.max() / kept[present].mean()
        assert seen_skew > 8, name  # the stream is lopsided ...
        assert kept_skew <= 2.0 + 0.2, name  # ... the kept set holds the big bin to ~ratio
    steering_kept = balancer.kept("steering")
    centre = STEERING_BINS.index(0.0)
    assert steering_kept[centre] < 0.2 * balancer.seen("steering")[centre]


def test_rare_bins_keep_every_sample() -> None:
    throttle, steering = _driving_stream(5_000)
    balancer = Balancer()
    # Three hard-left corners and four emergency stops somewhere in a long straight.
    throttle[[100, 2000, 4000, 4100]] = -1.0
    steering[[50, 2500, 4999]] = -0.95
    balancer.offer_many(throttle, steering)
    left = STEERING_BINS.index(-0.95)
    stop = THROTTLE_BINS.index(-1.0)
    assert balancer.seen("steering")[left] == balancer.kept("steering")[left] == 3
    assert balancer.seen("throttle")[stop] == balancer.kept("throttle")[stop] == 4
    seen, kept = balancer.seen("steering"), balancer.kept("steering")
    small = (seen > 0) & (seen <= kept[seen > 0].mean())
    assert small.any()
    assert np.array_equal(kept[small], seen[small])


def test_first_sample_of_every_output_is_kept() -> None:
    assert Balancer().offer(1.0, 0.0) == (True, True)


def test_the_keep_rule_on_a_small_stream() -> None:
    """ratio 1: a bin is held to the mean kept per seen bin, plus one."""
    balancer = Balancer(ratio=1.0)
    decisions = [balancer.offer(0.5, 0.0)[1] for _ in range(4)]
    # bin 0.0 alone: kept 0 < 0+1 keep; kept 1 < 1+1 keep; kept 2 < 2+1 keep ... all kept
    assert decisions == [True, True, True, True]
    assert balancer.offer(0.5, 0.55) == (True, True)  # a new bin: kept 0 < 4 / 2 + 1
    # Now mean kept = 5 / 2 = 2.5: the centre bin (4 kept) is over 3.5, the new one (1) not.
    assert balancer.offer(0.5, 0.0)[1] is False
    assert balancer.offer(0.5, 0.55)[1] is True
    assert balancer.kept("steering")[STEERING_BINS.index(0.0)] == 4
    assert balancer.seen("steering")[STEERING_BINS.index(0.0)] == 5


def test_offer_many_decides_exactly_as_offer_one_by_one() -> None:
    throttle, steering = _driving_stream(3_000, seed=5)
    one_by_one = Balancer(ratio=1.5)
    expected = np.array(
        [one_by_one.offer(float(t), float(s)) for t, s in zip(throttle, steering, strict=True)]
    )
    together = Balancer(ratio=1.5)
    got = np.concatenate(
        [
            together.offer_many(throttle[:1000], steering[:1000]),
            together.offer_many(throttle[1000:], steering[1000:]),
        ]
    )
    assert got.shape == (3_000, 2) and got.dtype == bool
    assert np.array_equal(got, expected)
    assert not got.all() and got.any()
    for name in OUTPUT_NAMES:
        assert np.array_equal(together.seen(name), one_by_one.seen(name))
        assert np.array_equal(together.kept(name), one_by_one.kept(name))
        assert together.kept(name).dtype == np.int64


def test_a_bad_value_counts_nothing() -> None:
    balancer = Balancer()
    balancer.offer(0.5, 0.5)
    with pytest.raises(ValueError):
        balancer.offer(0.5, float("nan"))
    with pytest.raises(ValueError):
        balancer.offer_many(np.array([0.1, 2.0]), np.array([0.0, 0.0]))
    assert balancer.seen("throttle").sum() == balancer.seen("steering").sum() == 1


def test_summary_and_checks() -> None:
    balancer = Balancer()
    for throttle, steering in [(-0.5, 0.35), (0.2, -0.75)] + [(1.0, 0.0)] * 10:
        balancer.offer(throttle, steering)
    line = balancer.summary()
    match = re.fullmatch(
        r"throttle kept (\d+)/12 in 3 bins, steering kept (\d+)/12 in 3 bins", line
    )
    assert match, line
    assert int(match[1]) == balancer.kept("throttle").sum() < 12
    assert int(match[2]) == balancer.kept("steering").sum()
    with pytest.raises(ValueError):
        balancer.seen("brake")
    for ratio in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            Balancer(ratio)


# --- the histogram ---------------------------------------------------------------------------


def test_histogram_png(tmp_path: Path) -> None:
    balancer = Balancer()
    throttle, steering = _driving_stream(2_000)
    balancer.offer_many(throttle, steering)
    path = tmp_path / "plots" / "histogram.png"
    write_histogram_png(path, balancer)
    first = cv2.imread(str(path))
    assert first is not None
    assert first.shape == (HISTOGRAM_PANEL_HEIGHT * len(OUTPUT_NAMES), HISTOGRAM_WIDTH, 3)
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 3  # bars, text, not a blank page

    balancer.offer_many(np.full(500, -0.45), np.full(500, 0.65))  # two bins grow a lot
    write_histogram_png(path, balancer)  # replaces the file in place
    second = cv2.imread(str(path))
    assert second is not None and second.shape == first.shape
    assert (second != first).any()
    assert sorted(p.name for p in path.parent.iterdir()) == ["histogram.png"]  # no temp files

    same = tmp_path / "again.png"
    write_histogram_png(same, balancer)
    assert np.array_equal(cv2.imread(str(same)), second)  # deterministic drawing


def test_histogram_of_an_empty_balancer(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    write_histogram_png(path, Balancer())
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] == HISTOGRAM_WIDTH
