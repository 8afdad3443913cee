"""model_0005_inceptionresnetv2: the seed's flagship line.

InceptionResNetV2 (include_top=False) as a nested backbone, global average pooling of its last
conv block (1536 features), Dense 1024, then two heads of Dense 256/64/16 -> 1. The backbone is
not frozen. Built exactly, it has 56,470,434 parameters (56,409,890 trainable, 60,544 the
backbone's batch-norm statistics).
"""

from __future__ import annotations

import keras
from keras import layers

from agent.nets.heads import two_heads
from agent.nets.pretrained import load_backbone_weights


def build_model_0005(
    name: str, input_shape: tuple[int, int, int], outputs: tuple[str, ...], pretrained: str
) -> keras.Model:
    """Build the model; `pretrained` is "none", "imagenet" or a local backbone weights file."""
    frame = keras.Input(shape=input_shape, dtype="uint8", name="frame")
    # ImageNet weights for InceptionResNetV2 expect pixels in [-1, 1]; scaling inside the model
    # keeps checkpoints and preprocessing from ever being paired wrongly.
    scaled = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit")(frame)
    backbone = keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=input_shape, pooling=None
    )
    load_backbone_weights(backbone, pretrained, name)
    # Pooling outside the backbone keeps its output the last conv feature map (the Convcam).
    features = layers.GlobalAveragePooling2D(name="pool")(backbone(scaled))
    common = layers.Dense(1024, activation="relu", name="common_dense_1024")(features)
    return keras.Model(frame, two_heads(common, units=(256, 64, 16), names=outputs), name=name)
