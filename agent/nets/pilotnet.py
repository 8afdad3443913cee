"""pilotnet_small: a PilotNet-style CNN that trains and drives in real time on a 2-core CPU."""

from __future__ import annotations

import keras
from keras import layers

from agent.errors import ModelError
from agent.nets.heads import two_heads

# (filters, kernel, stride) of NVIDIA's PilotNet convolution stack.
CONV_STACK = ((24, 5, 2), (36, 5, 2), (48, 5, 2), (64, 3, 1), (64, 3, 1))


def build_pilotnet_small(
    name: str, input_shape: tuple[int, int, int], outputs: tuple[str, ...], pretrained: str
) -> keras.Model:
    """Build the model; it has no pretrained backbone, so `pretrained` must be "none"."""
    if pretrained != "none":
        raise ModelError(
            f"model line pilotnet_small has no pretrained backbone (model.pretrained = "
            f"'{pretrained}'); set model.pretrained = \"none\""
        )
    frame = keras.Input(shape=input_shape, dtype="uint8", name="frame")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit")(frame)
    for index, (filters, kernel, stride) in enumerate(CONV_STACK, start=1):
        x = layers.Conv2D(filters, kernel, strides=stride, activation="elu", name=f"conv{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    x = layers.Dense(100, activation="elu", name="common_dense_100")(x)
    return keras.Model(frame, two_heads(x, units=(50, 10), names=outputs), name=name)
