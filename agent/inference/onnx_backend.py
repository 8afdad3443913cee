"""The ONNX Runtime backend: a Keras model exported to ONNX, checked, and run by ONNX Runtime.

Why: on this project's small CPU machines ONNX Runtime runs model_0005 faster than TensorFlow,
and on Windows, where TensorFlow has had no native GPU support since 2.10, it is the GPU path
(DirectML for any DirectX 12 GPU, CUDA/TensorRT for NVIDIA).

The graph that drives is one this machine exported (Keras's `model.export(format="onnx")`,
through tf2onnx) from exactly the weights the Keras model holds; nothing in the model store
decides what ONNX Runtime runs. The store may be shared with other machines, and a graph is
code: one planted there could match TensorFlow on every sample frame and still steer
otherwise on a real game frame, so no check of its outputs can tell it from an honest export.
Exports are therefore cached only in a private per-user folder (`cache_folder`), under a key
made of the SHA-256 of the weights as loaded, the model line, the outputs and the exporter's
versions, each file signed with an HMAC-SHA256 under a secret that never leaves that folder.
A file whose signature does not verify is never handed to ONNX Runtime, a folder that others
could write is not used at all, and nothing is read from or written into the store
(`<version>/onnx/` folders of earlier Charles versions are ignored, not deleted).

Every graph, cached or fresh, must still reproduce TensorFlow's outputs on sample frames within
`TOLERANCE` before it drives (against export bugs, not attackers): a cached file that does not
is exported again; a fresh export that does not is a `ModelError`.

The input stays uint8 (batch, height, width, 3) as in the Keras model: scaling happens inside
the graph, so only bytes cross to the device.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import DependencyError, ModelError, warn_once
from agent.files import CREATE_FLAGS, READ_FLAGS

if TYPE_CHECKING:
    import keras

    from agent.checkpoints.manifest import Checkpoint
    from agent.config import InferenceConfig

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
"""Largest absolute difference from TensorFlow allowed on any output (relative to the output's
magnitude for the Convcam's feature map, whose values are not bounded to [-1, 1])."""
CHECK_FRAMES = 4
MAX_ONNX_BYTES = 4 << 30
"""A graph holds the weights plus a little; anything bigger is not one of ours."""
EXPORT_FORMAT = 1
"""Part of every cache key: raise it when `_export` changes what it makes."""
CACHE_ENTRIES = 8
"""Exports kept in the private cache, the most recently used first (model_0005's are ~220 MB
each, and a hot swap adds one per checkpoint)."""
SECRET_FILE = "secret"
SECRET_BYTES = 32
MAGIC = b"charles-onnx-v1\n"
"""A cached file is MAGIC, the 32-byte HMAC-SHA256, then the ONNX graph."""
HEADER_BYTES = len(MAGIC) + hashlib.sha256().digest_size
STALE_TEMPORARY_SECONDS = 3600.0
"""A temporary file this old was left by a writer that died; younger ones may be in use."""
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
    """The file in the private cache that holds this export (None: not cached)."""
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
    compiled one). A checkpoint's weights use their export in the private cache when there is
    one with a valid signature that passes the check, and are exported (and cached) otherwise;
    fresh weights (`checkpoint` None) are exported and not cached. Raises `ModelError` when even
    a fresh export disagrees with TensorFlow. Only `checkpoint`'s model line and name are used:
    the weights are read from `runner`.
    """
    require_onnxruntime()
    require_exporter()
    frames = _check_frames(input_shape)
    expected = [[np.asarray(output) for output in reference(frame[np.newaxis])] for frame in frames]
    if checkpoint is None:
        return _exported(runner, frames, expected, config, "the fresh model", None, "")
    with private_cache() as cache:
        if cache is None:
            return _exported(runner, frames, expected, config, checkpoint.name, None, "")
        key = export_key(runner, checkpoint.manifest.model_line)
        found = cache.get(key)
        if found is not None:
            graph, path = found
            try:
                session = _checked(graph, path, frames, expected, config, 0.0)
            except ModelError as problem:
                log.warning("%s; exporting it again", problem)
            else:
                log.info("ONNX model from the cache: %s", path)
                return session
        return _exported(runner, frames, expected, config, checkpoint.name, cache, key)


def _exported(
    runner: keras.Model,
    frames: list[np.ndarray],
    expected: list[list[np.ndarray]],
    config: InferenceConfig,
    name: str,
    cache: ExportCache | None,
    key: str,
) -> OnnxSession:
    """A session for a fresh export of `runner`, checked, then cached under `key` in `cache`."""
    started = time.perf_counter()
    graph = _export(runner)
    seconds = time.perf_counter() - started
    session = _checked(graph, None, frames, expected, config, seconds)
    if cache is not None:
        session.path = cache.put(key, graph)
    log.info(
        "exported %s to ONNX in %.1f s (largest difference from TensorFlow %.1e)",
        name, seconds, session.max_difference,
    )  # fmt: skip
    return session


# --- what an export is made from -------------------------------------------------------------


def export_key(runner: keras.Model, model_line: str) -> str:
    """What decides the graph `_export(runner)` makes: the SHA-256 of the weights `runner` holds
    (hashed from memory, so it is what was loaded, whatever a store file says), the model line,
    the input and output shapes, and the versions of the exporter. Two runners with equal keys
    export the same network."""
    return json.dumps(
        {
            "format": EXPORT_FORMAT,
            "model_line": model_line,
            "weights_sha256": weights_sha256(runner),
            "input": _shape(runner.inputs[0].shape),
            "outputs": [_shape(output.shape) for output in runner.outputs],
            "exporter": _exporter_versions(),
        },
        sort_keys=True,
    )


def weights_sha256(runner: keras.Model) -> str:
    """SHA-256 over every weight's dtype, shape and bytes, in the model's order (~0.3 s for
    model_0005's 226 MB). Layer names are left out: Keras numbers them per process."""
    import keras

    digest = hashlib.sha256()
    for variable in runner.weights:
        array = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _shape(shape: Any) -> list[int | None]:
    return [None if size is None else int(size) for size in shape]


def _exporter_versions() -> dict[str, str]:
    """An upgrade of any of these may export another graph: it re-exports."""
    import keras
    import onnx
    import tensorflow
    import tf2onnx

    return {
        "keras": keras.__version__,
        "onnx": onnx.__version__,
        "tensorflow": tensorflow.__version__,
        "tf2onnx": tf2onnx.__version__,
    }


# --- the private cache -----------------------------------------------------------------------


def cache_folder() -> Path:
    """The private per-user folder of exports: `%LOCALAPPDATA%\\charles\\onnx` on Windows,
    `$XDG_CACHE_HOME/charles/onnx` (absolute values only, as XDG says) or
    `~/.cache/charles/onnx` elsewhere."""
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(base):
            base = str(Path.home() / ".cache")
    return Path(base) / "charles" / "onnx"


class UntrustedCache(Exception):
    """The cache folder could be written by someone else; the message says why and the fix."""


@contextmanager
def private_cache() -> Iterator[ExportCache | None]:
    """The private cache, open for one load; None (one warning per problem and process: every
    export is then made in memory) when its folder is not safe to trust or cannot be made."""
    folder = cache_folder()
    cache = None
    try:
        cache = ExportCache.open(folder)
    except UntrustedCache as problem:
        warn_once(log, f"not using the ONNX cache: {problem}; exporting in memory meanwhile")
    except OSError as error:
        warn_once(
            log,
            f"cannot use the ONNX cache {folder} ({error.strerror or error}); exporting in memory",
        )
    try:
        yield cache
    finally:
        if cache is not None:
            cache.close()


# On POSIX every file is reached through the opened folder (openat and friends), so renaming
# or replacing a folder on the path after the checks changes nothing. Windows has no such
# calls; there %LOCALAPPDATA% is private to the user by its access rights.
_AT_FOLDER = {os.open, os.stat, os.unlink, os.rename} <= os.supports_dir_fd and (
    os.scandir in os.supports_fd
)


class ExportCache:
    """The private cache folder, opened and checked: signed exports keyed by `export_key`.

    Trusted only when it is a real folder (not a link) owned by this user that nobody else may
    write into (no group or world write bit); its secret is 32 random bytes made here, once.
    """

    def __init__(self, folder: Path, fd: int | None) -> None:
        self.folder = folder
        self._fd = fd
        self._secret = b""

    @classmethod
    def open(cls, folder: Path) -> ExportCache:
        """Create (mode 0o700) or open `folder`; UntrustedCache when others could write it."""
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        fd = _open_folder(folder) if _AT_FOLDER else None
        cache = cls(folder, fd)
        try:
            cache._check(os.fstat(fd) if fd is not None else os.lstat(folder))
            cache._secret = cache._load_secret()
        except BaseException:
            cache.close()
            raise
        return cache

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def get(self, key: str) -> tuple[bytes, Path] | None:
        """The graph cached under `key` and its file, when its signature verifies; else None
        (a warning when a file is there but is not a sound, signed export of `key`)."""
        name = entry_name(key)
        path = self.folder / name
        try:
            data = self._read(name, HEADER_BYTES + MAX_ONNX_BYTES, touch=True)
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("cached ONNX model %s: %s; exporting it again", path,
                        error.strerror or error)  # fmt: skip
            return None
        graph = data[HEADER_BYTES:]
        if data[: len(MAGIC)] != MAGIC or not hmac.compare_digest(
            data[len(MAGIC) : HEADER_BYTES], self._sign(key, graph)
        ):
            log.warning(
                "cached ONNX model %s is not one this machine exported from these weights (its "
                "signature does not verify); exporting it again", path,
            )  # fmt: skip
            return None
        return graph, path

    def put(self, key: str, graph: bytes) -> Path | None:
        """Cache `graph` under `key`, signed, atomically; its path, or None when it cannot be
        written (a warning: the next load exports again, nothing else is lost)."""
        name = entry_name(key)
        try:
            self._write(name, MAGIC + self._sign(key, graph) + graph)
        except OSError as error:
            log.warning("could not cache the ONNX model in %s (%s); it is exported again next "
                        "time", self.folder, error.strerror or error)  # fmt: skip
            return None
        self._prune(keep=name)
        return self.folder / name

    def _check(self, info: os.stat_result) -> None:
        if stat.S_ISLNK(info.st_mode) or _is_junction(info):
            raise UntrustedCache(
                f"{self.folder} is a symbolic link; delete the link and Charles makes the folder"
            )
        if not stat.S_ISDIR(info.st_mode):
            raise UntrustedCache(f"{self.folder} is not a folder; delete it")
        if not hasattr(os, "geteuid"):
            return  # Windows: the folder's access rights are the user's profile's
        if info.st_uid != os.geteuid():
            raise UntrustedCache(
                f"{self.folder} belongs to user id {info.st_uid}, not to this user; delete it"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedCache(
                f"{self.folder} may be written by others (mode "
                f"{stat.S_IMODE(info.st_mode):o}); chmod 700 it, or delete it"
            )

    def _load_secret(self) -> bytes:
        """The folder's secret, made on first use; remade (invalidating every export signed with
        the old one) when it is not 32 bytes, as after a crash while it was written."""
        secret = os.urandom(SECRET_BYTES)
        try:
            fd = os.open(*self._at(SECRET_FILE), CREATE_FLAGS, 0o600, **self._dir())
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as stream:
                stream.write(secret)
            return secret
        try:
            existing = self._read(SECRET_FILE, SECRET_BYTES, owned=True)
        except OSError as error:
            if error.errno == errno.EPERM:
                raise UntrustedCache(f"{self.folder / SECRET_FILE}: {error.strerror}") from None
            existing = b""
        if len(existing) == SECRET_BYTES:
            return existing
        log.warning("remade the ONNX cache's secret %s (it was damaged); cached exports are "
                    "made again", self.folder / SECRET_FILE)  # fmt: skip
        self._write(SECRET_FILE, secret)
        return secret

    def _sign(self, key: str, graph: bytes) -> bytes:
        encoded = key.encode()
        mac = hmac.new(self._secret, len(encoded).to_bytes(8, "big") + encoded, hashlib.sha256)
        mac.update(graph)
        return mac.digest()

    def _at(self, name: str) -> tuple[str]:
        return (name,) if self._fd is not None else (str(self.folder / name),)

    def _dir(self) -> dict[str, int]:
        return {"dir_fd": self._fd} if self._fd is not None else {}

    def _read(self, name: str, limit: int, touch: bool = False, owned: bool = False) -> bytes:
        """A regular file's bytes, never through a link, at most `limit` of them (OSError
        otherwise); `touch` marks it used, for the pruning."""
        if self._fd is None and (self.folder / name).is_symlink():  # no O_NOFOLLOW (Windows)
            raise OSError(errno.ELOOP, "a symbolic link, never followed")
        try:
            fd = os.open(*self._at(name), READ_FLAGS, **self._dir())
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EMLINK):
                raise OSError(error.errno, "a symbolic link, never followed") from None
            raise
        with os.fdopen(fd, "rb") as stream:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if owned and hasattr(os, "geteuid") and info.st_uid != os.geteuid():
                raise OSError(errno.EPERM, f"it belongs to user id {info.st_uid}; delete it")
            data = stream.read(limit + 1)
            if len(data) > limit:
                raise OSError(errno.EFBIG, f"more than {limit} bytes: not one of ours")
            if touch:
                with suppress(OSError):
                    os.utime(fd if os.utime in os.supports_fd else self.folder / name)
            return data

    def _write(self, name: str, data: bytes) -> None:
        """Write `name` atomically (readers see the old file or all of the new one): a fresh
        temporary file, mode 0o600, renamed over it (replacing a link, never writing through)."""
        temporary = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(*self._at(temporary), CREATE_FLAGS, 0o600, **self._dir())
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            if self._fd is not None:
                os.replace(temporary, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            else:
                os.replace(self.folder / temporary, self.folder / name)
        except BaseException:
            with suppress(OSError):
                os.unlink(*self._at(temporary), **self._dir())
            raise

    def _prune(self, keep: str) -> None:
        """Keep the `CACHE_ENTRIES` most recently used exports (`keep` among them) and delete
        temporary files a dead writer left."""
        exports: list[tuple[int, str]] = []
        stale: list[str] = []
        now = time.time()  # compared with file times, which are wall-clock
        try:
            with os.scandir(self._fd if self._fd is not None else self.folder) as listing:
                for entry in listing:
                    info = entry.stat(follow_symlinks=False)
                    if entry.name.endswith(".onnx") and entry.name != keep:
                        exports.append((info.st_mtime_ns, entry.name))
                    elif entry.name.endswith(".tmp") and (
                        now - info.st_mtime > STALE_TEMPORARY_SECONDS
                    ):
                        stale.append(entry.name)
            exports.sort(reverse=True)
            for name in [*stale, *(name for _, name in exports[CACHE_ENTRIES - 1 :])]:
                os.unlink(*self._at(name), **self._dir())
        except OSError as error:
            log.debug("pruning the ONNX cache %s: %s", self.folder, error)


def entry_name(key: str) -> str:
    """The file name of `key`'s export: its model line (for people) and the key's SHA-256."""
    line = json.loads(key)["model_line"]
    return f"{line}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def _open_folder(folder: Path) -> int:
    try:
        return os.open(
            folder,
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
        )
    except OSError as error:
        if folder.is_symlink() or error.errno == errno.ELOOP:
            raise UntrustedCache(
                f"{folder} is a symbolic link; delete the link and Charles makes the folder"
            ) from None
        if error.errno == errno.ENOTDIR:
            raise UntrustedCache(f"{folder} is not a folder; delete it") from None
        raise


def _is_junction(info: os.stat_result) -> bool:
    """A Windows junction or other reparse point, which `lstat` does not call a link."""
    attributes = getattr(info, "st_file_attributes", 0)
    return bool(attributes & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0))


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
