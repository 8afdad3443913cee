"""The compiled predictor: same numbers as the model, plain floats, non-finite caught."""

from __future__ import annotations

import numpy as np
import pytest

from agent.inference.predictor import Predictor
from agent.nets.registry import get_line


@pytest.fixture(scope="module")
def pilotnet() -> Predictor:
    return Predictor.load("pilotnet_small", convcam=True)


def random_frames(shape: tuple[int, int, int], count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)


def test_predictor_matches_the_model_called_directly(pilotnet: Predictor) -> None:
    for frame in random_frames(pilotnet.line.input_shape, 5):
        prediction = pilotnet.predict(frame)
        throttle, steering = pilotnet.model(frame[np.newaxis], training=False)
        assert isinstance(prediction.throttle, float) and isinstance(prediction.steering, float)
        assert prediction.finite
        assert prediction.throttle == pytest.approx(float(throttle[0, 0]), abs=1e-5)
        assert prediction.steering == pytest.approx(float(steering[0, 0]), abs=1e-5)
        assert -1.0 <= prediction.throttle <= 1.0 and -1.0 <= prediction.steering <= 1.0


def test_different_frames_give_different_predictions(pilotnet: Predictor) -> None:
    black = pilotnet.predict(np.zeros(pilotnet.line.input_shape, np.uint8))
    white = pilotnet.predict(np.full(pilotnet.line.input_shape, 255, np.uint8))
    assert (black.throttle, black.steering) != (white.throttle, white.steering)


@pytest.mark.parametrize(
    ("line_name", "shape", "layer_before_head"),
    [
        ("pilotnet_small", (4, 13, 64), "flatten"),
        # The nested InceptionResNetV2 backbone: its last block's 1,536 kernels.
        ("model_0005_inceptionresnetv2", (7, 13, 1536), "pool"),
    ],
)
def test_convcam_is_the_last_conv_feature_map_of_the_same_forward_pass(
    line_name: str, shape: tuple[int, int, int], layer_before_head: str
) -> None:
    import keras

    line = get_line(line_name)
    model = line.build("none")
    with_cam = Predictor(model, line, "cam", convcam=True, warmup_runs=1)
    without = Predictor(model, line, "plain", warmup_runs=1)
    frame = random_frames(line.input_shape, 1, seed=3)[0]
    prediction = with_cam.predict(frame)
    assert prediction.convcam is not None and prediction.convcam.shape == shape
    # The very map the next layer reads, not another model's: computed from it directly.
    feature_map = model.get_layer(layer_before_head).input
    expected = keras.Model(model.input, feature_map)(frame[np.newaxis], training=False)
    assert np.allclose(prediction.convcam, np.asarray(expected)[0], atol=1e-4)
    # And the driving outputs are the same with or without it.
    plain = without.predict(frame)
    assert prediction.throttle == pytest.approx(plain.throttle, abs=1e-5)
    assert prediction.steering == pytest.approx(plain.steering, abs=1e-5)


def test_wrong_frame_is_refused(pilotnet: Predictor) -> None:
    with pytest.raises(ValueError, match="uint8 frames of shape"):
        pilotnet.predict(np.zeros((90, 160, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 frames of shape"):
        pilotnet.predict(np.zeros((270, 480, 3), np.uint8))


def test_non_finite_outputs_are_reported_and_never_passed_on() -> None:
    line = get_line("pilotnet_small")
    model = line.build("none")
    # NaN in the output layer itself: ReLU layers further up may turn NaN into 0.
    layer = model.get_layer("steering")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.full_like(bias, np.nan)])
    predictor = Predictor(model, line, "broken")
    prediction = predictor.predict(np.zeros(line.input_shape, np.uint8))
    assert not prediction.finite and prediction.throttle == pytest.approx(
        float(predictor.model(np.zeros((1, *line.input_shape), np.uint8))[0][0, 0]), abs=1e-5
    )


def test_flagship_takes_a_raw_frame_and_returns_two_bounded_floats() -> None:
    predictor = Predictor.load("model_0005_inceptionresnetv2", warmup_runs=1)
    frame = random_frames((270, 480, 3), 1)[0]
    prediction = predictor.predict(frame)
    throttle, steering = predictor.model(frame[np.newaxis], training=False)
    assert prediction.finite
    assert -1.0 <= prediction.throttle <= 1.0 and -1.0 <= prediction.steering <= 1.0
    assert prediction.throttle == pytest.approx(float(throttle[0, 0]), abs=1e-4)
    assert prediction.steering == pytest.approx(float(steering[0, 0]), abs=1e-4)
