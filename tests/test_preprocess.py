"""The frame -> model input transform shared by driving, collection and training."""

from __future__ import annotations

import numpy as np
import pytest

from agent.inference.preprocess import preprocess

# Quadrant colours as RGB; frames below are built in BGRA the way mss delivers them.
TOP_LEFT = (200, 10, 20)
TOP_RIGHT = (30, 180, 40)
BOTTOM_LEFT = (50, 60, 170)
BOTTOM_RIGHT = (250, 240, 5)


def quadrants(width: int, height: int, order: str = "bgra") -> np.ndarray:
    """A frame whose four quadrants have the four colours above."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[: height // 2, : width // 2] = TOP_LEFT
    rgb[: height // 2, width // 2 :] = TOP_RIGHT
    rgb[height // 2 :, : width // 2] = BOTTOM_LEFT
    rgb[height // 2 :, width // 2 :] = BOTTOM_RIGHT
    if order == "rgb":
        return rgb
    alpha = np.full((height, width, 1), 255, np.uint8)
    return np.concatenate([rgb[..., ::-1], alpha], axis=2)


def assert_quadrants(image: np.ndarray) -> None:
    height, width = image.shape[:2]
    h, w = height // 2, width // 2
    for block, colour in [
        (image[:h, :w], TOP_LEFT),
        (image[:h, w:], TOP_RIGHT),
        (image[h:, :w], BOTTOM_LEFT),
        (image[h:, w:], BOTTOM_RIGHT),
    ]:
        assert (block == colour).all(), (
            f"expected {colour}, found {np.unique(block.reshape(-1, 3), axis=0)}"
        )


def test_bgra_becomes_rgb_with_exact_colours() -> None:
    frame = np.empty((720, 1280, 4), np.uint8)
    frame[...] = (10, 20, 30, 255)  # B, G, R, A
    out = preprocess(frame, (1280, 720), (0, 0, 0, 0), (160, 90))
    assert out.dtype == np.uint8 and out.shape == (90, 160, 3)
    assert (out == (30, 20, 10)).all()


def test_rgb_input_keeps_its_colours() -> None:
    out = preprocess(
        quadrants(1280, 720, "rgb"), (1280, 720), (0, 0, 0, 0), (480, 270), order="rgb"
    )
    assert out.shape == (270, 480, 3)
    assert_quadrants(out)


def test_resize_keeps_the_geometry() -> None:
    out = preprocess(quadrants(1280, 720), (1280, 720), (0, 0, 0, 0), (160, 90))
    assert_quadrants(out)


def test_crop_removes_the_right_pixels() -> None:
    # The centre 640x360 holds a quarter of each quadrant: the four colours again.
    centre = preprocess(quadrants(1280, 720), (1280, 720), (180, 320, 180, 320), (160, 90))
    assert_quadrants(centre)
    # Only the bottom-right quadrant survives this crop (top, right, bottom, left).
    corner = preprocess(quadrants(1280, 720), (1280, 720), (360, 0, 0, 640), (160, 90))
    assert (corner == BOTTOM_RIGHT).all()
    # Asymmetric: 100 px off the top, 200 off the left, nothing else; output 1080x620 at 1:1.
    frame = quadrants(1280, 720)
    kept = preprocess(frame, (1280, 720), (100, 0, 0, 200), (1080, 620))
    expected = frame[100:, 200:, 2::-1]
    assert np.array_equal(kept, expected)


def test_a_resized_window_is_cropped_like_the_configured_size() -> None:
    crop = (180, 320, 180, 320)
    full = preprocess(quadrants(1280, 720), (1280, 720), crop, (160, 90))
    half = preprocess(quadrants(640, 360), (1280, 720), crop, (160, 90))
    double = preprocess(quadrants(2560, 1440), (1280, 720), crop, (160, 90))
    assert np.array_equal(full, half)
    assert np.array_equal(full, double)
    corner = preprocess(quadrants(640, 360), (1280, 720), (360, 0, 0, 640), (40, 30))
    assert (corner == BOTTOM_RIGHT).all()


@pytest.mark.parametrize("order", ["bgra", "rgb"])
@pytest.mark.parametrize("input_size", [(160, 90), (640, 360)])
def test_output_is_a_new_contiguous_writable_array(order: str, input_size: tuple[int, int]) -> None:
    frame = quadrants(1280, 720, order)
    frame.flags.writeable = False  # captured frames are read-only
    out = preprocess(frame, (1280, 720), (180, 320, 180, 320), input_size, order=order)  # type: ignore[arg-type]
    assert out.flags.c_contiguous and out.flags.writeable
    assert out.shape == (input_size[1], input_size[0], 3) and out.dtype == np.uint8
    assert not np.shares_memory(out, frame)


def test_mistakes_are_value_errors() -> None:
    frame = quadrants(1280, 720)
    with pytest.raises(ValueError, match="leaves nothing"):
        preprocess(frame, (1280, 720), (0, 640, 0, 640), (160, 90))
    with pytest.raises(ValueError, match="leaves nothing"):
        preprocess(frame, (1280, 720), (400, 0, 400, 0), (160, 90))
    with pytest.raises(ValueError, match="shape"):
        preprocess(frame, (1280, 720), (0, 0, 0, 0), (160, 90), order="rgb")
    with pytest.raises(ValueError, match="shape"):
        preprocess(frame.astype(np.float32), (1280, 720), (0, 0, 0, 0), (160, 90))
    with pytest.raises(ValueError, match="order"):
        preprocess(frame, (1280, 720), (0, 0, 0, 0), (160, 90), order="bgr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_size"):
        preprocess(frame, (1280, 720), (0, 0, 0, 0), (0, 90))
    with pytest.raises(ValueError, match="crop"):
        preprocess(frame, (1280, 720), (0, -1, 0, 0), (160, 90))
