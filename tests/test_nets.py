"""Model lines: exact architecture, the uint8 -> two bounded floats contract, pretrained starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from agent.errors import ModelError
from agent.nets.registry import LINE_NAMES, get_line
from tests.helpers.charles import assert_one_line_error

FLAGSHIP = "model_0005_inceptionresnetv2"


def parameter_counts(model: keras.Model) -> tuple[int, int, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable + frozen, trainable, frozen


@pytest.fixture(scope="module")
def built() -> Callable[[str], keras.Model]:
    """Each line built once with fresh weights, for the tests that only look at a model: a
    model_0005 build takes seconds (56 M weights)."""
    models: dict[str, keras.Model] = {}

    def build(name: str) -> keras.Model:
        if name not in models:
            models[name] = get_line(name).build("none")
        return models[name]

    return build


@pytest.fixture(scope="module")
def flagship(built: Callable[[str], keras.Model]) -> keras.Model:
    return built(FLAGSHIP)


def test_model_0005_has_the_seed_parameter_counts(flagship: keras.Model) -> None:
    assert parameter_counts(flagship) == (56_470_434, 56_409_890, 60_544)
    backbone = flagship.get_layer("inception_resnet_v2")
    assert backbone.trainable, "the backbone must re-train on driving data, not be frozen"


@pytest.mark.parametrize("name", LINE_NAMES)
def test_every_line_takes_uint8_frames_and_names_two_outputs(
    name: str, built: Callable[[str], keras.Model]
) -> None:
    line = get_line(name)
    model = built(name)
    assert model.input.dtype == "uint8"
    assert tuple(model.input_shape[1:]) == line.input_shape
    assert list(model.output_names) == ["throttle", "steering"]
    assert model.get_layer(line.convcam_layer).output.shape[-1] > 0


def test_pilotnet_small_has_the_readmes_parameter_count(
    built: Callable[[str], keras.Model],
) -> None:
    total, trainable, frozen = parameter_counts(built("pilotnet_small"))
    assert (total, trainable, frozen) == (475_390, 475_390, 0)


@pytest.mark.parametrize("name", LINE_NAMES)
def test_every_line_scales_pixels_to_minus_one_to_one_inside_the_model(
    name: str, built: Callable[[str], keras.Model]
) -> None:
    """The ImageNet backbone expects [-1, 1]; the scaling lives in the model, exactly there."""
    line = get_line(name)
    model = built(name)
    scaled = keras.Model(model.input, model.get_layer("scale_to_unit").output)
    frame = np.zeros((1, *line.input_shape), np.uint8)
    frame[0, 0, 0] = (0, 255, 51)
    frame[0, 1, 1] = (127, 128, 204)
    out = np.asarray(scaled(frame, training=False))[0]
    assert out[0, 0] == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1.0], abs=1e-6)
    expected = [127 / 127.5 - 1.0, 128 / 127.5 - 1.0, 204 / 127.5 - 1.0]
    assert out[1, 1] == pytest.approx(expected, abs=1e-6)
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)
    # Nothing between the frame and the scaling: the scaled tensor is what the first layer sees.
    first = model.get_layer("scale_to_unit")
    assert first.input is model.input


def test_outputs_stay_in_range_even_for_extreme_weights() -> None:
    model = get_line("pilotnet_small").build("none")
    # Blow up the last hidden layers so pre-activations are huge: tanh must still bound them.
    for name in ("throttle", "steering"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 1e4, bias + 50.0])
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 90, 160, 3), dtype=np.uint8)
    throttle, steering = (np.asarray(o) for o in model(frames, training=False))
    assert throttle.shape == steering.shape == (4, 1)
    for values in (throttle, steering):
        assert np.all(np.abs(values) <= 1.0)
    # Saturated outputs prove the pre-activations really were huge: the bound was tested.
    assert np.abs(throttle).max() > 0.99 and np.abs(steering).max() > 0.99


def test_local_pretrained_backbone_weights_really_arrive(
    tmp_path: Path, flagship: keras.Model
) -> None:
    line = get_line(FLAGSHIP)
    donor = keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=line.input_shape
    )
    path = tmp_path / "backbone.weights.h5"
    donor.save_weights(str(path))
    expected = donor.get_weights()
    del donor

    model = line.build(str(path))
    loaded = model.get_layer("inception_resnet_v2").get_weights()
    assert len(loaded) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected, strict=True))
    # A random start differs, so equality above means the file was really used.
    fresh = flagship.get_layer("inception_resnet_v2").get_weights()
    assert not np.array_equal(fresh[0], expected[0])


def test_pretrained_file_errors_are_model_errors(tmp_path: Path) -> None:
    line = get_line(FLAGSHIP)
    with pytest.raises(ModelError, match="no such weights file"):
        line.build(str(tmp_path / "missing.weights.h5"))
    pickle_like = tmp_path / "weights.pkl"
    pickle_like.write_bytes(b"not weights")
    with pytest.raises(ModelError, match="not an HDF5 weights file"):
        line.build(str(pickle_like))
    small = get_line("pilotnet_small").build("none")
    wrong = tmp_path / "pilotnet.weights.h5"
    small.save_weights(str(wrong))
    with pytest.raises(ModelError, match=r"pilotnet.weights.h5 .*does not fit inception"):
        line.build(str(wrong))
    with pytest.raises(ModelError, match="no pretrained backbone"):
        get_line("pilotnet_small").build("imagenet")


def test_imagenet_offline_says_what_to_do(tmp_path: Path, run_charles) -> None:
    # An empty Keras cache and an unreachable proxy make the download fail even on a machine
    # with internet, the way it fails on an offline one.
    env = {
        "KERAS_HOME": str(tmp_path / "keras"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    result = run_charles(
        "model", "summary", "--model", FLAGSHIP, "--pretrained", "imagenet", env=env
    )
    assert_one_line_error(result, "imagenet", "could not download", "model.pretrained")
