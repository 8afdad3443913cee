"""The ONNX Runtime backend: a Keras model exported to ONNX, checked, and run by ONNX Runtime.

Why: on this project's small CPU machines ONNX Runtime runs model_0005 faster than TensorFlow,
and on Windows, where TensorFlow has had no native GPU support since 2.10, it is the GPU path
(DirectML for any DirectX 12 GPU, CUDA/TensorRT for NVIDIA).

The ONNX file is made from the Keras model that holds the checkpoint's weights (Keras's
`model.export(format="onnx")`, through tf2onnx), so the network definition stays the Keras
model line; nothing in a checkpoint folder is trusted as a graph. The file is cached next to the
checkpoint (`<version>/onnx/`; in the user's cache folder when that folder is read-only, e.g.
the reference checkpoint inside an installed package) under the weights' SHA-256, read back
without following links, as bytes (so it can never point ONNX Runtime at external files), and
every time it is used it must reproduce TensorFlow's outputs on sample frames within
`TOLERANCE`. A cached file that does not is exported again; a fresh export that does not is a
`ModelError`.

The input stays uint8 (batch, height, width, 3) as in the Keras model: scaling happens inside
the graph, so only bytes cross to the device.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import DependencyError, ModelError

if TYPE_CHECKING:
    import keras

    from agent.config import InferenceConfig
    from agent.store import Checkpoint

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
"""Largest absolute difference from TensorFlow allowed on any output (relative to the output's
magnitude for the Convcam's feature map, whose values are not bounded to [-1, 1])."""
CHECK_FRAMES = 4
ONNX_FOLDER = "onnx"
MAX_ONNX_BYTES = 4 << 30
"""A graph holds the weights plus a little; anything bigger is not one of ours."""

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "directml": "DmlExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
INSTALL = {
    "cpu": "pip install 'charles[onnx]'",
    "cuda": "pip install 'charles[onnx-cuda]' (onnxruntime-gpu; NVIDIA driver and CUDA 12)",
    "tensorrt": "pip install 'charles[onnx-cuda]' plus NVIDIA TensorRT",
    "directml": "pip install 'charles[onnx-directml]' (onnxruntime-directml, Windows 10/11)",
}


def require_onnxruntime() -> Any:
    """Import onnxruntime, or explain how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(
            "inference.backend is onnxruntime but ONNX Runtime is not installed: "
            f"{INSTALL['cpu']} (GPU: {INSTALL['cuda']}, or {INSTALL['directml']}), "
            'or set inference.backend = "tensorflow"'
        ) from None
    return onnxruntime


def require_exporter() -> None:
    """tf2onnx and onnx make the ONNX file from the Keras model; both come with charles[onnx]."""
    for name in ("tf2onnx", "onnx"):
        try:
            __import__(name)
        except ImportError:
            raise DependencyError(
                f"inference.backend is onnxruntime but {name} (needed to export the model to "
                f"ONNX) is not installed: {INSTALL['cpu']}, or set inference.backend = "
                '"tensorflow"'
            ) from None


def check_installed(config: InferenceConfig) -> None:
    """Everything the configured backend needs is here (before any window or model is opened)."""
    if config.backend != "onnxruntime":
        return
    require_onnxruntime()
    require_exporter()
    choose_providers(config.provider)


def choose_providers(provider: str) -> list[str]:
    """ONNX Runtime provider names for `inference.provider`, CPU always last as the fallback."""
    available = set(require_onnxruntime().get_available_providers())
    if provider == "auto":
        order = [PROVIDERS[name] for name in ("tensorrt", "cuda", "directml")]
        chosen = [name for name in order if name in available]
        return [*chosen, PROVIDERS["cpu"]]
    wanted = PROVIDERS[provider]
    if wanted not in available:
        raise DependencyError(
            f"inference.provider is {provider} but this ONNX Runtime has no {wanted} "
            f"(it has {', '.join(sorted(available)) or 'none'}): {INSTALL[provider]}, "
            'or set inference.provider = "auto"'
        )
    return [wanted] if provider == "cpu" else [wanted, PROVIDERS["cpu"]]


@dataclass
class OnnxSession:
    """One ONNX Runtime session for one set of weights; `run` takes a uint8 batch."""

    session: Any
    input_name: str
    path: Path | None
    """The cached file it was read from (None: exported to a temporary file)."""
    export_seconds: float
    """0 when it came from the cache."""
    max_difference: float
    """Largest difference from TensorFlow found by the check, scaled as in `TOLERANCE`."""

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


def session_for(
    runner: keras.Model,
    reference: Any,
    input_shape: tuple[int, ...],
    checkpoint: Checkpoint | None,
    config: InferenceConfig,
) -> OnnxSession:
    """An ONNX Runtime session for `runner` as it is now, checked against `reference`.

    `reference` is the TensorFlow function that computes the same outputs (the predictor's
    compiled one). Uses the cached export of `checkpoint` when it passes the check; exports (and
    caches) otherwise. Raises `ModelError` when even a fresh export disagrees with TensorFlow.
    """
    require_onnxruntime()
    require_exporter()
    frames = _check_frames(input_shape)
    expected = [[np.asarray(output) for output in reference(frame[np.newaxis])] for frame in frames]
    cached = cache_path(checkpoint, runner) if checkpoint is not None else None
    if cached is not None and cached.exists():
        try:
            session = _checked(_read(cached), cached, frames, expected, config, 0.0)
        except ModelError as problem:
            log.warning("%s; exporting it again", problem)
        else:
            log.info("ONNX model from the cache: %s", cached)
            return session
    started = time.perf_counter()
    graph = _export(runner)
    seconds = time.perf_counter() - started
    session = _checked(graph, None, frames, expected, config, seconds)
    if cached is not None:
        session.path = _write_cache(cached, graph, checkpoint)
    log.info(
        "exported %s to ONNX in %.1f s (largest difference from TensorFlow %.1e)",
        checkpoint.name if checkpoint is not None else "the fresh model", seconds,
        session.max_difference,
    )  # fmt: skip
    return session


def cache_path(checkpoint: Checkpoint, runner: keras.Model) -> Path:
    """Where the export of `checkpoint`'s weights in `runner`'s shape is cached.

    The name carries the weights' SHA-256 and the outputs, so a changed checkpoint or a graph
    with the Convcam output never reads another one's file.
    """
    outputs = len(runner.outputs)
    name = f"{checkpoint.manifest.weights_sha256[:16]}-{outputs}out.onnx"
    if _writable(checkpoint.folder) and not _in_package(checkpoint.folder):
        return checkpoint.folder / ONNX_FOLDER / name
    return user_cache() / checkpoint.manifest.model_line / name


def user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charles" / "onnx"


def _in_package(folder: Path) -> bool:
    """A checkpoint shipped inside Charles (the reference): never written into, installed or
    not (a source checkout would otherwise grow untracked files)."""
    package = Path(__file__).resolve().parent
    return folder.resolve().is_relative_to(package)


def _writable(folder: Path) -> bool:
    target = folder / ONNX_FOLDER
    return os.access(target if target.is_dir() else folder, os.W_OK)


def _check_frames(input_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Frames that exercise the whole uint8 range: random pictures plus black and white."""
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, size=input_shape, dtype=np.uint8) for _ in range(CHECK_FRAMES)]
    return [*frames, np.zeros(input_shape, np.uint8), np.full(input_shape, 255, np.uint8)]


def _export(runner: keras.Model) -> bytes:
    """The ONNX graph of `runner` (Keras's exporter, via tf2onnx), as bytes."""
    # tf2onnx logs every step of the conversion at INFO; one line of ours says it happened.
    for name in ("tf2onnx", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="charles-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        try:
            runner.export(str(path), format="onnx", verbose=False)
        except Exception as error:  # a Keras/tf2onnx failure: the model cannot use this backend
            raise ModelError(
                f"could not export {runner.name} to ONNX ({type(error).__name__}: "
                f'{str(error)[:200]}); set inference.backend = "tensorflow"'
            ) from None
        return path.read_bytes()


def _checked(
    graph: bytes,
    path: Path | None,
    frames: list[np.ndarray],
    expected: list[list[np.ndarray]],
    config: InferenceConfig,
    export_seconds: float,
) -> OnnxSession:
    """A session for `graph`, after it reproduced `expected` on `frames`; ModelError if not."""
    ort = require_onnxruntime()
    where = str(path) if path is not None else "the exported ONNX model"
    try:
        session = ort.InferenceSession(
            graph, sess_options=session_options(config), providers=choose_providers(config.provider)
        )
    except DependencyError:
        raise
    except Exception as error:  # a damaged or foreign file: ONNX Runtime's own error
        raise ModelError(f"{where} does not load in ONNX Runtime ({str(error)[:200]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(session.get_outputs()) != len(expected[0]):
        raise ModelError(f"{where} does not have the model's inputs and outputs")
    onnx = OnnxSession(session, inputs[0].name, path, export_seconds, 0.0)
    worst = 0.0
    for frame, wanted in zip(frames, expected, strict=True):
        try:
            got = onnx.run(frame[np.newaxis])
        except Exception as error:
            raise ModelError(f"{where} fails on a sample frame ({str(error)[:200]})") from None
        worst = max(worst, _difference(got, wanted))
    onnx.max_difference = worst
    if not worst <= TOLERANCE:  # NaN too
        raise ModelError(
            f"{where}: ONNX Runtime's outputs differ from TensorFlow's by {worst:.2e} on sample "
            f'frames (at most {TOLERANCE:.0e} allowed); set inference.backend = "tensorflow"'
        )
    return onnx


def _difference(got: list[np.ndarray], wanted: list[np.ndarray]) -> float:
    """Largest absolute difference over all outputs; the feature map's relative to its scale."""
    if len(got) != len(wanted):
        return float("inf")
    worst = 0.0
    for index, (a, b) in enumerate(zip(got, wanted, strict=True)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        scale = 1.0 if index < 2 else max(1.0, float(np.abs(b).max()))
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


def session_options(config: InferenceConfig) -> Any:
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ONNX Runtime workers spin by default, waiting for the next run: on a 2-core machine
    # that is CPU taken from capture and the game between predictions.
    spin = "1" if config.spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3  # errors only: its warnings are about provider fallbacks
    return options


def _read(path: Path) -> bytes:
    """A cached file's bytes: a regular file, never through a link, of a plausible size."""
    from agent.store import open_regular

    if path.parent.is_symlink():
        raise ModelError(f"cached ONNX model {path}: its folder is a symbolic link; delete it")
    with open_regular(path, f"cached ONNX model {path}", missing="it will be exported") as (
        stream,
        info,
    ):
        if info.st_size > MAX_ONNX_BYTES:
            raise ModelError(f"cached ONNX model {path} is {info.st_size} bytes: not ours")
        return stream.read()


def _write_cache(path: Path, graph: bytes, checkpoint: Checkpoint | None) -> Path | None:
    """Write `graph` to `path` atomically (a reader sees all of it or nothing); None on failure.

    A cache that cannot be written costs the next start an export, nothing else.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.is_symlink():
            raise OSError("the onnx folder is a symbolic link")
        with open(temporary, "xb") as stream:
            stream.write(graph)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        log.warning("could not cache the ONNX model at %s (%s); it is exported again next time",
                    path, error)  # fmt: skip
        return None
    return path
