"""The model line registry: name -> how to build that network and what it expects.

Importing this module is cheap (no Keras/TensorFlow import); the builders import Keras when
called, so config validation and `charles --help` stay fast.

Every line shares one contract, which checkpoints, predictors and the trainer rely on:
- input: one raw RGB frame, uint8, shape (height, width, 3); scaling to what the network wants
  happens inside the model, so a checkpoint can never meet the wrong preprocessing;
- outputs: two named single-unit regressions, `throttle` and `steering`, each in [-1, 1];
- `convcam_layer` names the layer whose output is the last convolutional feature map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.errors import ModelError

if TYPE_CHECKING:
    import keras

OUTPUT_NAMES = ("throttle", "steering")

LineName = Literal["model_0005_inceptionresnetv2", "pilotnet_small"]
"""A registered line's name, the words model.line takes; a test holds it to `LINES`."""


@dataclass(frozen=True)
class ModelLine:
    """One architecture, as named in the model store."""

    name: str
    input_shape: tuple[int, int, int]
    """(height, width, channels) of the uint8 RGB frame the model takes."""
    description: str
    convcam_layer: str
    """Name of the layer whose output (last conv feature map) the Convcam shows."""
    builder: Callable[[ModelLine, str], keras.Model]
    """(this line, pretrained) -> a new model; see `build`."""
    outputs: tuple[str, ...] = OUTPUT_NAMES
    """The output heads, in order."""

    def build(self, pretrained: str) -> keras.Model:
        """pretrained ("none", "imagenet" or a weights file path) -> a new model."""
        return self.builder(self, pretrained)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) in pixels, the order image libraries use."""
        return self.input_shape[1], self.input_shape[0]


# The builders import Keras, so they are imported when a line is built. They take what they
# need of the line as values: the builder modules never import this one (no import circle).


def _build_model_0005(line: ModelLine, pretrained: str) -> keras.Model:
    from agent.nets.inception import build_model_0005

    return build_model_0005(line.name, line.input_shape, line.outputs, pretrained)


def _build_pilotnet_small(line: ModelLine, pretrained: str) -> keras.Model:
    from agent.nets.pilotnet import build_pilotnet_small

    return build_pilotnet_small(line.name, line.input_shape, line.outputs, pretrained)


LINES: dict[str, ModelLine] = {
    line.name: line
    for line in (
        ModelLine(
            name="model_0005_inceptionresnetv2",
            input_shape=(270, 480, 3),
            description=(
                "Keras InceptionResNetV2 backbone (not frozen, optional ImageNet start), "
                "Dense 1024, two heads of Dense 256/64/16 -> 1 (the seed's flagship)"
            ),
            convcam_layer="inception_resnet_v2",
            builder=_build_model_0005,
        ),
        ModelLine(
            name="pilotnet_small",
            input_shape=(90, 160, 3),
            description=(
                "PilotNet-style CNN (5 conv, Dense 100, two heads of Dense 50/10 -> 1), "
                "real time on a 2-core CPU; the bundled demo's line"
            ),
            convcam_layer="conv5",
            builder=_build_pilotnet_small,
        ),
    )
}

LINE_NAMES: tuple[str, ...] = tuple(LINES)


def get_line(name: str) -> ModelLine:
    """The registered line called `name`, or a `ModelError` listing the known ones."""
    try:
        return LINES[name]
    except KeyError:
        known = ", ".join(LINE_NAMES)
        raise ModelError(f"unknown model line '{name}'; known lines: {known}") from None
