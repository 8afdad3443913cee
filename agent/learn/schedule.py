"""The learning-rate warm-up: a linear ramp from 0 to the base rate, then constant.

A fresh Adam takes large, badly scaled steps on its first batches (its moment estimates are
still empty); ramping the rate in keeps those steps from wrecking a pretrained start or a
checkpoint being trained further. Built from `keras.ops`, so it runs on every Keras backend.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="charles")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """rate(step) = base * min(1, (step + 1) / warmup); `warmup` = 0 means no ramp.

    `step` is the optimizer's iteration count, which the trainer restores on a restart, so a
    resumed run continues the ramp where it stopped instead of starting it again.
    """

    def __init__(self, base: float, warmup: int) -> None:
        if not base > 0:
            raise ValueError(f"base learning rate must be positive, not {base!r}")
        if warmup < 0:
            raise ValueError(f"warm-up must be >= 0 batches, not {warmup!r}")
        self.base = float(base)
        self.warmup = int(warmup)

    def __call__(self, step: Any) -> Any:
        if self.warmup == 0:
            return keras.ops.convert_to_tensor(self.base, dtype="float32")
        done = keras.ops.cast(step, "float32") + 1.0
        return self.base * keras.ops.minimum(1.0, done / float(self.warmup))

    def rate_at(self, step: int) -> float:
        """The rate for batch `step` (0-based), as a plain float (for consoles and tests)."""
        if self.warmup == 0:
            return self.base
        return self.base * min(1.0, (step + 1) / self.warmup)

    def get_config(self) -> dict[str, Any]:
        return {"base": self.base, "warmup": self.warmup}
