"""Compiled batch-1 inference for a model line.

The model line (what the network means) is separate from the interpreter (how it executes),
chosen by `inference.backend`:
- "tensorflow": a `tf.function` with a fixed input signature, traced and warmed once before
  use, so the drive loop never pays for tracing or `model.predict`'s per-call setup (XLA and
  mixed precision behind `inference.xla` / `inference.mixed_precision`);
- "onnxruntime": the same Keras model exported to ONNX and run by ONNX Runtime
  (agent/inference/onnx_backend.py), checked against the compiled TensorFlow function whenever its
  weights change.
Both take the frame as uint8 and scale it inside the graph, and both sit behind `predict()`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.checkpoints.load import load_into
from agent.checkpoints.manifest import Checkpoint
from agent.config import InferenceConfig
from agent.errors import DependencyError
from agent.nets.registry import ModelLine, get_line
from agent.nets.runtime import require_tensorflow
from agent.types import Prediction

if TYPE_CHECKING:
    import keras

    from agent.inference.onnx_backend import OnnxSession

log = logging.getLogger(__name__)

TENSORFLOW = "tensorflow"
ONNXRUNTIME = "onnxruntime"


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
    """Runs one model on one frame at a time and returns plain floats.

    `weights_ready=False` (the hot swap's spare copy): the weights are placeholders, so the
    ONNX backend exports nothing until `weights_changed()`; TensorFlow is traced and warmed
    either way, so filling the copy later never traces.
    """

    def __init__(
        self,
        model: keras.Model,
        line: ModelLine,
        name: str,
        convcam: bool = False,
        warmup_runs: int = 3,
        inference: InferenceConfig | None = None,
        checkpoint: Checkpoint | None = None,
        weights_ready: bool = True,
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
        self.inference = inference or InferenceConfig()
        self.backend = self.inference.backend
        self.checkpoint: Checkpoint | None = checkpoint
        """The checkpoint whose weights the model holds (None: fresh weights)."""
        outputs = list(model.outputs)
        if convcam:
            outputs.append(convcam_tensor(model, line))
        self._runner = keras.Model(model.input, outputs) if convcam else model
        spec = tf.TensorSpec((1, *line.input_shape), tf.uint8, name="frame")
        self._infer = tf.function(
            lambda frame: self._runner(frame, training=False),
            input_signature=[spec],
            jit_compile=self.inference.xla,
        )
        self._with_convcam = convcam
        self.onnx: OnnxSession | None = None
        """The ONNX Runtime session predicting (backend "onnxruntime" once weights are in)."""
        if self.backend == ONNXRUNTIME and weights_ready:
            self.weights_changed()
        self.warmup_seconds = self._warm_up(warmup_runs)

    def weights_changed(self) -> None:
        """The model holds new weights: the ONNX backend exports (or reads its cache), checks
        and opens a session for them (ModelError if they cannot run there); TensorFlow reads
        the variables it already has."""
        if self.backend != ONNXRUNTIME:
            return
        from agent.inference.onnx_backend import session_for

        self.onnx = None  # never predict with the previous weights' session
        self.onnx = session_for(
            self._runner, self._infer, self.line.input_shape, self.checkpoint, self.inference
        )
        self._warm_up(2)

    @classmethod
    def load(
        cls,
        line_name: str,
        checkpoint: Checkpoint | None = None,
        pretrained: str = "none",
        convcam: bool = False,
        warmup_runs: int = 3,
        inference: InferenceConfig | None = None,
    ) -> Predictor:
        """Build `line_name`, fill it from `checkpoint` (or `pretrained`) and warm it up."""
        require_tensorflow()
        inference = inference or InferenceConfig()
        line = get_line(line_name)
        # A checkpoint overwrites every weight, so the pretrained start would be wasted work.
        model = build_model(line, "none" if checkpoint else pretrained, inference)
        if checkpoint is not None:
            load_into(model, checkpoint, line.name)
            name = checkpoint.name
        else:
            name = f"{line.name} (fresh, pretrained={Path(pretrained).name})"
        return cls(
            model, line, name, convcam=convcam, warmup_runs=warmup_runs, inference=inference,
            checkpoint=checkpoint,
        )  # fmt: skip

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
        batch = frame[np.newaxis]
        if self.onnx is not None:
            outputs = self.onnx.run(batch)
        else:
            outputs = [output.numpy() for output in self._infer(batch)]
        throttle = float(outputs[0][0, 0])
        steering = float(outputs[1][0, 0])
        convcam = np.asarray(outputs[2][0], np.float32) if self._with_convcam else None
        seconds = time.perf_counter() - start
        # Passed on as they are, NaN included: what a broken prediction means (neutral) is
        # decided in one place, the control mapping.
        return Prediction(throttle, steering, seconds=seconds, convcam=convcam)


def build_model(line: ModelLine, pretrained: str, inference: InferenceConfig) -> keras.Model:
    """`line.build(pretrained)`, in float16 compute when `inference.mixed_precision` is on
    (TensorFlow backend only: ONNX Runtime runs the float32 graph)."""
    mixed = inference.mixed_precision and inference.backend == TENSORFLOW
    with _dtype_policy("mixed_float16" if mixed else None):
        return line.build(pretrained)


@contextlib.contextmanager
def _dtype_policy(name: str | None) -> Iterator[None]:
    """Keras's global dtype policy set to `name` while building, then put back: it must not
    leak into models built later in the process (the trainer's, a shadow's)."""
    if name is None:
        yield
        return
    import keras

    before = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(before)
