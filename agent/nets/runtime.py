"""TensorFlow itself: importing it with a clear error, and its process-wide thread pools.

Here, beside the networks, because whatever builds a network first (a predictor, the store
checking that a checkpoint fits its line, the trainer) starts TensorFlow's runtime.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from agent.errors import DependencyError

log = logging.getLogger(__name__)


class ThreadSettings(Protocol):
    """What `configure_threads` reads: config.toml's `[inference]` has these two."""

    intra_op_threads: int
    inter_op_threads: int


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


def configure_threads(inference: ThreadSettings) -> None:
    """TensorFlow's thread pools as `inference` says (0: TensorFlow's default).

    Only possible before TensorFlow runs its first operation in this process; later (a second
    drive in one process, as in tests) the pools stay as they are, with a warning if they
    differ.
    """
    tf = require_tensorflow()
    threading = tf.config.threading
    wanted = (inference.intra_op_threads, inference.inter_op_threads)
    current = (
        threading.get_intra_op_parallelism_threads(),
        threading.get_inter_op_parallelism_threads(),
    )
    if wanted == current:
        return
    try:
        threading.set_intra_op_parallelism_threads(wanted[0])
        threading.set_inter_op_parallelism_threads(wanted[1])
    except RuntimeError:
        log.warning(
            "TensorFlow already runs with %d intra-op and %d inter-op threads in this process; "
            "inference.intra_op_threads/inter_op_threads apply from the next start", *current
        )  # fmt: skip
