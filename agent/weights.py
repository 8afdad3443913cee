"""Loading a weights file into a model, all or nothing.

Keras only warns when parts of a file do not match a model ("layers will retain their
freshly-initialized weights") and carries on; a half-loaded network drives like a random one,
so here every such warning is an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ModelError

if TYPE_CHECKING:
    import keras


def load_weights_strictly(model: keras.Model, path: Path, what: str) -> None:
    """Load `path` into `model`; any mismatch raises `ModelError` starting with `what`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            model.load_weights(str(path))
    except (ValueError, OSError, KeyError, UserWarning) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"{what} does not fit {model.name}: {detail}") from None
