"""Mistakes a user can make, and full devices, end in one `charles: error:` line, never a
traceback: a negative game seed, telemetry onto /dev/full, collecting onto a full disk, a
picture whose header claims an absurd size, and a count or duration that is no positive
number."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.cli import main
from agent.game.channel import free_udp_port
from tests.helpers.charles import REPO, assert_one_line_error
from tests.helpers.disks import fill, small_filesystem

CONFIG = ("--config", str(REPO / "config.toml"))


def test_a_negative_game_seed_is_one_line(run_charles) -> None:
    result = run_charles("game", *CONFIG, "--seed", "-1", "--seconds", "5", timeout=60)
    assert_one_line_error(result, "seed -1", "0 to 2147483647")


def test_game_telemetry_onto_a_full_device_is_one_line(x_display: str, run_charles) -> None:
    port = str(free_udp_port())
    result = run_charles(
        "game", *CONFIG, "--telemetry", "/dev/full", "--port", port, "--seconds", "20",
        env={"DISPLAY": x_display}, timeout=60,
    )  # fmt: skip
    assert_one_line_error(result, "telemetry", "/dev/full", "No space left on device")


def test_game_telemetry_is_never_written_through_a_link(
    x_display: str, tmp_path: Path, run_charles
) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_text("keep me")
    (tmp_path / "telemetry.jsonl").symlink_to(victim)
    result = run_charles(
        "game", *CONFIG, "--telemetry", str(tmp_path / "telemetry.jsonl"), "--port",
        str(free_udp_port()), "--seconds", "5", env={"DISPLAY": x_display}, timeout=60,
    )  # fmt: skip
    assert_one_line_error(result, "cannot write telemetry to", "telemetry.jsonl")
    assert victim.read_text() == "keep me"


def test_collecting_onto_a_full_disk_is_one_line_and_leaves_no_half_shard(
    tmp_path: Path, run_charles
) -> None:
    with small_filesystem(2 << 20) as disk:
        data = disk / "data"
        data.mkdir()
        filler = fill(data, leave_bytes=16 << 10)
        result = run_charles(
            "collect", *CONFIG, "--render", "offscreen", "--data", str(data),
            "--frames", "400", "--set", "data.samples_per_shard=40", cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert_one_line_error(result, str(data), "No space left on device", "data.folder")
        assert sorted(path.name for path in data.iterdir()) == [filler.name]


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A real 4x4 PNG whose header (IHDR, CRC fixed) claims width x height pixels."""
    ok, encoded = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_convcam_on_a_picture_claiming_100000x100000_pixels_is_one_line(
    tmp_path: Path, run_charles
) -> None:
    picture = tmp_path / "huge.png"
    _png_claiming(picture, 100_000, 100_000)
    result = run_charles(
        "convcam", *CONFIG, str(picture), "--out", str(tmp_path / "out.png"), timeout=120
    )
    assert_one_line_error(result, "100000x100000", "huge.png")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["drive", "--seconds", "0"], "argument --seconds: must be a positive number, not '0'"),
        (["collect", "--seconds", "nan"], "argument --seconds: must be a positive number"),
        (["collect", "--frames", "0"], "argument --frames: must be a positive whole number"),
        (["train", "--batches", "2.5"], "argument --batches: must be a positive whole number"),
        (["train", "--seconds=-inf"], "argument --seconds: must be a positive number"),
        (["convcam", "x.png", "--scale", "33"], "argument --scale: must be a whole number from "
         "1 to 32, not '33'"),
    ],
)  # fmt: skip
def test_a_count_or_duration_that_is_no_positive_number_is_refused_as_it_is_parsed(
    capsys, args: list[str], refused: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*args, *CONFIG])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: charles {args[0]} ")
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith(f"charles: error: {refused}"), line


def test_a_refused_flag_is_one_line_from_the_command_too(run_charles) -> None:
    result = run_charles("collect", *CONFIG, "--frames", "-5", "--render", "offscreen")
    assert result.returncode == 2
    assert_one_line_error(result, "argument --frames: must be a positive whole number, not '-5'")
