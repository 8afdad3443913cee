"""The Convcam picture: every kernel as one tile, in a known layout, one brightness scale; and
`charles convcam` on a real checkpoint and a real picture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import CharlesError
from agent.inference.convcam import GAP, grid, read_picture, tile
from agent.nets.registry import get_line
from tests.helpers.charles import REPO, assert_one_line_error
from tests.helpers.drives import publish_constant_driver
from tests.test_errors_cli import _png_claiming
from tests.test_shards_hostile import MiB, run_child


def test_the_grid_is_as_square_as_possible() -> None:
    assert grid(1536) == (39, 40)  # model_0005's last block
    assert grid(64) == (8, 8)  # pilotnet_small's conv5
    assert grid(5) == (2, 3)
    with pytest.raises(ValueError):
        grid(0)


def test_each_kernel_is_its_own_tile_row_by_row_on_one_scale() -> None:
    height, width, channels = 10, 10, 5
    feature_map = np.zeros((height, width, channels), np.float32)
    for channel in range(channels):
        feature_map[:, :, channel] = channel  # kernel k is uniformly k
    # One hot pixel in 500: above the 99th percentile (4), so it does not darken the rest.
    feature_map[0, 0, 4] = 100.0
    picture = tile(feature_map, scale=2)
    rows, columns = grid(channels)
    tile_h, tile_w = height * 2 + GAP, width * 2 + GAP
    assert picture.shape == (rows * tile_h - GAP, columns * tile_w - GAP)
    assert picture.dtype == np.uint8
    levels = []
    for channel in range(channels):
        row, column = divmod(channel, columns)
        cells = picture[row * tile_h : row * tile_h + height * 2,
                        column * tile_w : column * tile_w + width * 2]  # fmt: skip
        levels.append(int(cells[-1, -1]))
    # Row by row (a column-major layout would read these out of order), one scale: 0 black,
    # the 99th percentile (4) white, 2 half way.
    assert levels == [0, 63, 127, 191, 255]
    hot_row, hot_column = divmod(4, columns)
    assert picture[hot_row * tile_h, hot_column * tile_w] == 255  # scale shared, clipped
    assert (picture[:, tile_w - 1] == 0).all()  # the gap between tiles is black


def test_a_dead_map_is_black_not_noise() -> None:
    assert not tile(np.full((2, 2, 3), -1.0, np.float32)).any()


def test_charles_convcam_saves_the_tiled_picture_for_a_checkpoint(
    tmp_path: Path, run_charles
) -> None:
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.25, steering=-0.5)
    image = tmp_path / "frame.png"
    rng = np.random.default_rng(5)
    cv2.imwrite(str(image), rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8))
    out = tmp_path / "cam.png"
    result = run_charles(
        "convcam", str(image), "--out", str(out), "--scale", "2",
        "--config", str(REPO / "config.toml"), "--model", "pilotnet_small",
        "--set", f"model.store={json.dumps(str(store))}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "64 maps of 4x13 in 8 rows of 8" in result.stdout
    assert "throttle +0.250 steering -0.500" in result.stdout  # the checkpoint's own outputs
    picture = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    line = get_line("pilotnet_small")
    assert line.convcam_layer == "conv5"
    assert picture.shape == (8 * (4 * 2 + GAP) - GAP, 8 * (13 * 2 + GAP) - GAP)
    assert picture.max() > 0

    # Never over a file, never through a link: a second run takes the next free name.
    first = out.read_bytes()
    again = run_charles(*result.args[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"-> {tmp_path / 'cam-2.png'}" in again.stdout and out.read_bytes() == first
    assert f"{out} exists; writing into {tmp_path / 'cam-2.png'}" in again.stderr
    (tmp_path / "link.png").symlink_to(image)
    linked = run_charles(*result.args[3:5], "--out", str(tmp_path / "link.png"), *result.args[7:])
    assert_one_line_error(linked, "is a link or not a plain file")
    assert cv2.imread(str(image)).shape == (720, 1280, 3)  # the link's target is untouched


def test_charles_convcam_refuses_what_is_not_a_picture(tmp_path: Path, run_charles) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    result = run_charles("convcam", str(text), "--config", str(REPO / "config.toml"))
    assert_one_line_error(result, "notes.txt is not a picture")


# --- reading the picture ---------------------------------------------------------------------


def test_read_picture_reads_png_and_jpeg_as_opencv_does(tmp_path: Path) -> None:
    picture = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    for name in ("shot.png", "shot.jpg"):
        cv2.imwrite(str(tmp_path / name), picture)
        expected = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(read_picture(tmp_path / name), expected)


_READ_HUGE = """
import sys
from pathlib import Path
from agent.inference.convcam import read_picture
from agent.errors import CharlesError
_start_measuring()
try:
    read_picture(Path(sys.argv[1]))
except CharlesError as error:
    print(error)
"""


def _jpeg_claiming(path: Path, width: int, height: int) -> None:
    """A real JPEG whose start-of-frame header claims width x height pixels."""
    ok, encoded = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    data[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_a_picture_claiming_a_huge_size_is_refused_before_decoding(
    tmp_path: Path, kind: str
) -> None:
    """30000 x 30000 is under OpenCV's own pixel limit: decoding would allocate 2.7 GB."""
    path = tmp_path / f"huge.{kind}"
    if kind == "png":
        _png_claiming(path, 30_000, 30_000)
    else:
        _jpeg_claiming(path, 30_000, 30_000)
    child = run_child(_READ_HUGE, str(path), timeout=60)
    assert child.returncode == 0, child.stderr
    assert "30000x30000 pixels" in child.stdout and str(path) in child.stdout
    assert child.peak_rss < 64 * MiB, child.peak_rss


def test_read_picture_refuses_what_is_not_a_picture_file_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "shot.png"
    os.mkfifo(fifo)  # opening it for reading the usual way would wait for a writer
    for odd in (fifo, Path("/dev/zero")):
        with pytest.raises(CharlesError, match="is not a file"):
            read_picture(odd)
    (tmp_path / "gif.png").write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(CharlesError, match="is not a picture Charles reads"):
        read_picture(tmp_path / "gif.png")
