"""Compiled batch-1 inference for a model line.

The model line (what the network means) is separate from this interpreter (how it executes):
here a `tf.function` with a fixed input signature, traced and warmed once before use, so the
drive loop never pays for tracing or `model.predict`'s per-call setup. A later ONNX Runtime
backend fits behind the same `predict()`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import DependencyError
from agent.nets.registry import ModelLine, get_line
from agent.store import Checkpoint, load_into
from agent.types import Prediction

if TYPE_CHECKING:
    import keras


def require_tensorflow() -> Any:
    """Import TensorFlow, or explain how to install it."""
    try:
        import tensorflow as tf
    except ImportError:
        raise DependencyError(
            "TensorFlow is not installed: pip install 'charles[cpu]' (or 'charles[gpu]' on a "
            "Linux machine with an NVIDIA GPU), or run scripts/setup"
        ) from None
    return tf


def convcam_tensor(model: keras.Model, line: ModelLine) -> Any:
    """The last conv feature map as `model` computes it: the output of `line.convcam_layer`.

    A nested model (model_0005's InceptionResNetV2 backbone) has its own graph: its `.output`
    is not connected to the outer model's input. What the outer model computed is the output
    of the node where the outer model called it.
    """
    import keras

    layer = model.get_layer(line.convcam_layer)
    if not isinstance(layer, keras.Model):
        return layer.output
    calls = layer._inbound_nodes  # Keras has no public accessor for a nested model's call
    if len(calls) != 1:
        raise ValueError(
            f"{line.name}: the Convcam layer {line.convcam_layer} is called {len(calls)} times; "
            "it must be called exactly once"
        )
    return calls[0].output_tensors[0]


class Predictor:
    """Runs one model on one frame at a time and returns plain floats."""

    def __init__(
        self,
        model: keras.Model,
        line: ModelLine,
        name: str,
        convcam: bool = False,
        warmup_runs: int = 3,
    ) -> None:
        tf = require_tensorflow()
        import keras

        if keras.backend.backend() != "tensorflow":
            raise DependencyError(
                f"the predictor needs Keras's tensorflow backend (KERAS_BACKEND is "
                f"'{keras.backend.backend()}'); unset KERAS_BACKEND or set it to tensorflow"
            )
        self.line = line
        self.name = name
        self.model = model
        self.checkpoint: Checkpoint | None = None
        """The checkpoint whose weights the model holds (None: fresh weights)."""
        outputs = list(model.outputs)
        if convcam:
            outputs.append(convcam_tensor(model, line))
        runner = keras.Model(model.input, outputs) if convcam else model
        spec = tf.TensorSpec((1, *line.input_shape), tf.uint8, name="frame")
        self._infer = tf.function(
            lambda frame: runner(frame, training=False), input_signature=[spec]
        )
        self._with_convcam = convcam
        self.warmup_seconds = self._warm_up(warmup_runs)

    @classmethod
    def load(
        cls,
        line_name: str,
        checkpoint: Checkpoint | None = None,
        pretrained: str = "none",
        convcam: bool = False,
        warmup_runs: int = 3,
    ) -> Predictor:
        """Build `line_name`, fill it from `checkpoint` (or `pretrained`) and warm it up."""
        require_tensorflow()
        line = get_line(line_name)
        # A checkpoint overwrites every weight, so the pretrained start would be wasted work.
        model = line.build("none" if checkpoint else pretrained)
        if checkpoint is not None:
            load_into(model, checkpoint, line.name)
            name = checkpoint.name
        else:
            name = f"{line.name} (fresh, pretrained={Path(pretrained).name})"
        predictor = cls(model, line, name, convcam=convcam, warmup_runs=warmup_runs)
        predictor.checkpoint = checkpoint
        return predictor

    def _warm_up(self, runs: int) -> float:
        """Trace the function and run it a few times so the first real frame is not slow."""
        start = time.perf_counter()
        frame = np.zeros(self.line.input_shape, dtype=np.uint8)
        for _ in range(max(1, runs)):
            self.predict(frame)
        return time.perf_counter() - start

    def predict(self, frame: np.ndarray) -> Prediction:
        """Predict on one uint8 RGB frame of exactly the line's input shape."""
        if frame.shape != self.line.input_shape or frame.dtype != np.uint8:
            raise ValueError(
                f"{self.line.name} takes uint8 frames of shape {self.line.input_shape}, "
                f"got {frame.dtype} {frame.shape}"
            )
        start = time.perf_counter()
        outputs = self._infer(frame[np.newaxis])
        throttle = float(outputs[0].numpy()[0, 0])
        steering = float(outputs[1].numpy()[0, 0])
        convcam = outputs[2].numpy()[0] if self._with_convcam else None
        seconds = time.perf_counter() - start
        # Passed on as they are, NaN included: what a broken prediction means (neutral) is
        # decided in one place, the control mapping.
        return Prediction(throttle, steering, seconds=seconds, convcam=convcam)
