"""Starting a backbone from pretrained weights: Keras's ImageNet download or a local file."""

from __future__ import annotations

from pathlib import Path

import keras

from agent.errors import ModelError
from agent.nets.weights import load_weights_strictly

IMAGENET_FILES = {
    "inception_resnet_v2": "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def load_backbone_weights(backbone: keras.Model, pretrained: str, line_name: str) -> None:
    """Fill `backbone` in place from `pretrained` ("none", "imagenet" or a file path).

    Only HDF5 weight files are accepted (Keras `.weights.h5`, or the legacy `.h5` that Keras
    applications download): they hold arrays only, so loading one never runs code. A local file
    goes through the strict loader: it must hold exactly the backbone's arrays, all finite.
    """
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        _load_imagenet(backbone, line_name)
        return
    path = Path(pretrained).expanduser()
    if not path.exists():  # a folder or FIFO is refused below, as not a regular file
        raise ModelError(
            f'model.pretrained: no such weights file: {path} (use "none", "imagenet" or '
            "the path of a backbone .weights.h5/.h5 file)"
        )
    if path.suffix != ".h5":
        raise ModelError(
            f"model.pretrained: {path} is not an HDF5 weights file (.weights.h5 or .h5); "
            "only weight files are loaded, never saved models that could carry code"
        )
    load_weights_strictly(backbone, path, f"model.pretrained: {path} ({line_name} backbone)")


def _load_imagenet(backbone: keras.Model, line_name: str) -> None:
    file_name = IMAGENET_FILES.get(backbone.name)
    if file_name is None:
        raise ModelError(f'model line {line_name} has no ImageNet weights; use "none"')
    try:
        # Keras's own loader: downloads once into ~/.keras/models, then reads from there.
        reference = keras.applications.InceptionResNetV2(
            include_top=False, weights="imagenet", input_shape=backbone.input_shape[1:]
        )
    except Exception as error:  # Keras raises a bare Exception for a failed download
        if "URL fetch failure" not in str(error):
            raise
        raise ModelError(
            'model.pretrained = "imagenet": could not download Keras\'s ImageNet weights for '
            f"InceptionResNetV2 (no network?). On a machine with internet, get {file_name} "
            "(what keras.applications.InceptionResNetV2(weights='imagenet', include_top=False) "
            "downloads into ~/.keras/models/), copy it here and set model.pretrained to its path"
        ) from None
    backbone.set_weights(reference.get_weights())
