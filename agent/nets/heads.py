"""The two regression heads every model line ends in."""

from __future__ import annotations

import keras
from keras import layers


def two_heads(
    features: keras.KerasTensor, units: tuple[int, ...], names: tuple[str, ...]
) -> list[keras.KerasTensor]:
    """One head per output name: Dense layers of `units` (ReLU), then one tanh unit in [-1, 1].

    tanh bounds the outputs without extra parameters, so parameter counts stay those of the
    plain regression heads the seed describes.
    """
    outputs = []
    for name in names:
        hidden = features
        for width in units:
            hidden = layers.Dense(width, activation="relu", name=f"{name}_dense_{width}")(hidden)
        outputs.append(layers.Dense(1, activation="tanh", name=name)(hidden))
    return outputs
