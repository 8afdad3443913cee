"""Balancing v3: which collected samples join the balanced set of each output.

Driving data is lopsided: on a straight the steering is 0.0 and the throttle is floored for
minutes, and a network trained on it learns to go straight. Every sample carries all outputs,
but a balanced set is built for one output at a time: that output's value is binned, and a bin
that already holds far more than the average bin stops taking samples, while rare bins (hard
corners, braking) keep everything.

Bins split [-1, 1] into tenths, with exact values that mean something (centred wheel, pedal
fully released or floored) in bins of their own:

- steering: (-1.0,-0.9) ... (-0.1,0.0), 0.0, (0.0,0.1) ... (0.9,1.0): 21 bins; -1.0 falls
  into the first bin and 1.0 into the last;
- throttle (accelerate - brake, so negative is braking): the seed's pedal bins 0.0,
  (0.0,0.1) ... (0.9,1.0), 1.0 once for each pedal, sharing 0.0: -1.0, (-1.0,-0.9) ...
  (-0.1,0.0), 0.0, (0.0,0.1) ... (0.9,1.0), 1.0: 23 bins.

A value exactly on an interior edge belongs to the bin above it in magnitude: 0.1 is in
(0.1,0.2) and -0.1 in (-0.2,-0.1), the same way a pedal reading of 0.1 is "at least a tenth
pressed". Labels are float32 in the shard files, where 0.7 is 0.69999999: a value within
5e-8 of an edge counts as on it, so a label lands in the same bin before and after storing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.files import write_atomically
from agent.nets.registry import OUTPUT_NAMES

_TENTHS = 10
_EDGE_DECIMALS = 6
"""Tenths are rounded to this many decimals before flooring: 6.9999999 (float32 0.7) is 7."""


def _interval(low: float, high: float) -> str:
    return f"({low:.1f},{high:.1f})"


def _signed_labels(exact_ends: bool) -> tuple[str, ...]:
    negative = [_interval(-(t + 1) / _TENTHS, -t / _TENTHS) for t in reversed(range(_TENTHS))]
    positive = [_interval(t / _TENTHS, (t + 1) / _TENTHS) for t in range(_TENTHS)]
    ends = (["-1.0"], ["1.0"]) if exact_ends else ([], [])
    return (*ends[0], *negative, "0.0", *positive, *ends[1])


@dataclass(frozen=True)
class Bins:
    """The bins of one output's values in [-1, 1] (see the module docstring for the layout)."""

    name: str
    labels: tuple[str, ...]
    exact_ends: bool = False
    """True: -1.0 and 1.0 have bins of their own (pedals); False: they close the end bins."""

    def __post_init__(self) -> None:
        if self.labels != _signed_labels(self.exact_ends):
            raise ValueError(f"bins {self.name}: labels do not match the tenths layout")

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, value: float) -> int:
        """The bin of `value`; ValueError for NaN, infinity or anything outside [-1, 1]."""
        return int(self.indices(np.asarray([value], dtype=np.float64))[0])

    def indices(self, values: np.ndarray) -> np.ndarray:
        """The bin of every value, as int64 of the same shape; ValueError as for `index`."""
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(
                f"{self.name} values must be finite, got {values[~np.isfinite(values)][0]}"
            )
        if (np.abs(values) > 1.0).any():
            bad = values[np.abs(values) > 1.0][0]
            raise ValueError(f"{self.name} values must lie in [-1, 1], got {bad}")
        tenth = np.floor(np.round(np.abs(values) * _TENTHS, _EDGE_DECIMALS)).astype(np.int64)
        tenth = np.minimum(tenth, _TENTHS - 1)  # 1.0 itself (or within 5e-8 of it): top tenth
        first = 1 if self.exact_ends else 0  # index of (-1.0,-0.9)
        zero = first + _TENTHS
        index = np.where(values < 0, zero - 1 - tenth, zero + 1 + tenth)
        index = np.where(values == 0, zero, index)
        if self.exact_ends:
            index = np.where(values == -1.0, 0, index)
            index = np.where(values == 1.0, len(self.labels) - 1, index)
        return index.astype(np.int64)


THROTTLE_BINS = Bins("throttle", _signed_labels(exact_ends=True), exact_ends=True)
STEERING_BINS = Bins("steering", _signed_labels(exact_ends=False), exact_ends=False)
BINS_BY_OUTPUT: dict[str, Bins] = {
    name: {"throttle": THROTTLE_BINS, "steering": STEERING_BINS}[name] for name in OUTPUT_NAMES
}


class Balancer:
    """Decides, sample by sample, which outputs' balanced sets a sample joins.

    For each output it counts, per bin, the samples seen and the samples kept. A new sample
    first counts as seen in its bin; it is then kept for that output when

        kept[bin] < ratio * mean(kept over the bins that have seen a sample) + 1

    (the mean includes the sample's own bin, so the first sample of a new bin lowers the bar
    for the common ones). A rare bin therefore keeps everything, and a common bin (steering
    0.0 on a straight) holds about `ratio` times the average bin. The decision for one output
    does not depend on the others: a straight-ahead sample may be dropped for steering and
    kept for throttle because it was braking.
    """

    def __init__(self, ratio: float = 2.0) -> None:
        if not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"balance ratio must be a positive number, not {ratio!r}")
        self.ratio = float(ratio)
        self._bins = [BINS_BY_OUTPUT[name] for name in OUTPUT_NAMES]
        self._seen = [np.zeros(len(bins), dtype=np.int64) for bins in self._bins]
        self._kept = [np.zeros(len(bins), dtype=np.int64) for bins in self._bins]
        # Running totals make each decision O(1): mean kept = kept total / bins seen.
        self._kept_total = [0] * len(self._bins)
        self._bins_seen = [0] * len(self._bins)

    def offer(
        self, throttle: float, steering: float, outputs: tuple[str, ...] = OUTPUT_NAMES
    ) -> tuple[bool, bool]:
        """Count one sample; whether it joins each output's set, in OUTPUT_NAMES order.

        Only the sets of `outputs` are offered the sample (and count it): a label that is not
        trustworthy for one output (dagger's pedal label while the agent drives) stays out of
        that output's set without skewing its counts.
        """
        for name in outputs:
            self._column(name)
        if outputs == OUTPUT_NAMES:
            row = self.offer_many(np.asarray([throttle]), np.asarray([steering]))[0]
            return bool(row[0]), bool(row[1])
        values = {"throttle": throttle, "steering": steering}
        decision = [False] * len(OUTPUT_NAMES)
        for column, (name, bins) in enumerate(zip(OUTPUT_NAMES, self._bins, strict=True)):
            if name in outputs:
                index = bins.indices(np.asarray([values[name]]))
                decision[column] = bool(self._decide(column, index)[0])
        return decision[0], decision[1]

    def offer_many(self, throttle: np.ndarray, steering: np.ndarray) -> np.ndarray:
        """`offer` for N samples in order: (N, 2) bool, exactly as N calls would decide."""
        values = {"throttle": np.asarray(throttle), "steering": np.asarray(steering)}
        if values["throttle"].shape != values["steering"].shape or values["throttle"].ndim != 1:
            raise ValueError("throttle and steering must be 1-D arrays of the same length")
        # Bin everything first, so a bad value rejects the whole call before any counting.
        indices = [
            bins.indices(values[name]) for name, bins in zip(OUTPUT_NAMES, self._bins, strict=True)
        ]
        decisions = np.zeros((len(values["throttle"]), len(OUTPUT_NAMES)), dtype=bool)
        for column, bin_indices in enumerate(indices):
            decisions[:, column] = self._decide(column, bin_indices)
        return decisions

    def _decide(self, column: int, bin_indices: np.ndarray) -> np.ndarray:
        seen, kept = self._seen[column], self._kept[column]
        kept_total, bins_seen = self._kept_total[column], self._bins_seen[column]
        keep = np.zeros(len(bin_indices), dtype=bool)
        for row, b in enumerate(bin_indices.tolist()):
            if seen[b] == 0:
                bins_seen += 1
            seen[b] += 1
            if kept[b] < self.ratio * kept_total / bins_seen + 1:
                kept[b] += 1
                kept_total += 1
                keep[row] = True
        self._kept_total[column], self._bins_seen[column] = kept_total, bins_seen
        return keep

    def _column(self, output: str) -> int:
        if output not in OUTPUT_NAMES:
            raise ValueError(f"unknown output {output!r}; outputs are {', '.join(OUTPUT_NAMES)}")
        return OUTPUT_NAMES.index(output)

    def seen(self, output: str) -> np.ndarray:
        """Samples counted per bin of `output` (a copy, int64)."""
        return self._seen[self._column(output)].copy()

    def kept(self, output: str) -> np.ndarray:
        """Samples kept per bin of `output` (a copy, int64)."""
        return self._kept[self._column(output)].copy()

    def summary(self) -> str:
        """One line, e.g. "throttle kept 812/4000 in 9 bins, steering kept 1500/4000 in 17 bins"."""
        return ", ".join(
            f"{name} kept {int(kept.sum())}/{int(seen.sum())} in {int((seen > 0).sum())} bins"
            for name, seen, kept in zip(OUTPUT_NAMES, self._seen, self._kept, strict=True)
        )


# --- the histogram picture -------------------------------------------------------------------

HISTOGRAM_WIDTH = 1280
HISTOGRAM_PANEL_HEIGHT = 360
"""Pixels; the picture is HISTOGRAM_WIDTH wide and one panel high per output."""

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_GRID = (225, 225, 225)
_SEEN = (170, 170, 170)  # BGR grey
_KEPT = (200, 120, 30)  # BGR blue
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 48, 96
"""Margins of a panel's plot area: tick labels left, title and legend on top, bin labels below."""


def write_histogram_png(path: Path, balancer: Balancer) -> None:
    """Draw samples seen and kept per bin, one panel per output, into the PNG `path`.

    Bars use a log scale (a straight-ahead bin may hold 100 times the others). The file is
    replaced atomically, so a viewer never shows half a picture.
    """
    panels = [
        _panel(name, BINS_BY_OUTPUT[name], balancer.seen(name), balancer.kept(name))
        for name in OUTPUT_NAMES
    ]
    ok, encoded = cv2.imencode(".png", np.vstack(panels))
    if not ok:
        raise RuntimeError("OpenCV could not encode the histogram as PNG")
    write_atomically(path, lambda stream: stream.write(encoded.tobytes()))


def _panel(name: str, bins: Bins, seen: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """One output's panel: a grey (seen) and a blue (kept) bar per bin, on a log scale."""
    image = np.full((HISTOGRAM_PANEL_HEIGHT, HISTOGRAM_WIDTH, 3), _WHITE, dtype=np.uint8)
    plot_w = HISTOGRAM_WIDTH - _LEFT - _RIGHT
    plot_h = HISTOGRAM_PANEL_HEIGHT - _TOP - _BOTTOM
    base = _TOP + plot_h
    decades = max(1, math.ceil(math.log10(1 + int(seen.max(initial=0)))))

    def bar_top(count: int) -> int:
        return base - round(plot_h * math.log10(1 + count) / decades)

    for decade in range(decades + 1):
        y = bar_top(10**decade - (1 if decade == 0 else 0))  # 0 for the base line, then 10^k
        cv2.line(image, (_LEFT, y), (_LEFT + plot_w, y), _GRID if decade else _BLACK, 1)
        _text(image, _count_label(10**decade if decade else 0), (4, y + 4), 0.4)

    slot = plot_w / len(bins)
    bar = max(1, int(slot * 0.4))
    for b, label in enumerate(bins.labels):
        left = _LEFT + int(b * slot + slot * 0.1)
        for offset, count, colour in ((0, seen[b], _SEEN), (bar, kept[b], _KEPT)):
            if count:
                cv2.rectangle(
                    image,
                    (left + offset, bar_top(int(count))),
                    (left + offset + bar - 1, base),
                    colour,
                    cv2.FILLED,
                )
        _vertical_text(image, label, centre_x=_LEFT + int((b + 0.5) * slot), top=base + 6)

    title = f"{name}: samples per bin (log scale), kept {int(kept.sum())} of {int(seen.sum())}"
    _text(image, title, (_LEFT, 26), 0.6)
    legend_x = HISTOGRAM_WIDTH - _RIGHT - 150
    for i, (word, colour) in enumerate((("seen", _SEEN), ("kept", _KEPT))):
        x = legend_x + i * 75
        cv2.rectangle(image, (x, 14), (x + 14, 28), colour, cv2.FILLED)
        _text(image, word, (x + 20, 27), 0.5)
    bottom = HISTOGRAM_PANEL_HEIGHT - 1
    cv2.line(image, (0, bottom), (HISTOGRAM_WIDTH, bottom), _GRID, 1)  # between the panels
    return image


def _count_label(count: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if count >= size:
            return f"{count // size}{suffix}"
    return str(count)


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float) -> None:
    cv2.putText(image, text, origin, _FONT, scale, _BLACK, 1, cv2.LINE_AA)


def _vertical_text(image: np.ndarray, text: str, centre_x: int, top: int) -> None:
    """Write `text` reading bottom-up below a bar (OpenCV cannot rotate text itself)."""
    (width, height), baseline = cv2.getTextSize(text, _FONT, 0.4, 1)
    strip = np.full((height + baseline + 2, width + 2, 3), _WHITE, dtype=np.uint8)
    cv2.putText(strip, text, (1, height + 1), _FONT, 0.4, _BLACK, 1, cv2.LINE_AA)
    strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    rows = min(strip.shape[0], image.shape[0] - top)
    left = max(0, centre_x - strip.shape[1] // 2)
    cols = min(strip.shape[1], image.shape[1] - left)
    image[top : top + rows, left : left + cols] = strip[:rows, :cols]
