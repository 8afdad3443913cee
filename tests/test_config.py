"""config.toml: the committed file is valid, and every class of mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.errors import ConfigError
from tests.conftest import REPO, assert_one_line_error


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_committed_config_is_valid_and_matches_defaults() -> None:
    config = load_config(REPO / "config.toml")
    # The committed file documents every key with its default value.
    assert config == Config()
    assert config.source.endswith("config.toml")


def test_values_are_typed_and_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[capture]\nfps = 20\nsize = [800, 450]\n"))
    assert config.capture.fps == 20
    assert config.capture.size == (800, 450)
    with pytest.raises(AttributeError):
        config.capture.fps = 5  # type: ignore[misc]


def test_integer_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[controller]\nsmoothing = 0\n"))
    assert config.controller.smoothing == 0.0
    assert isinstance(config.controller.smoothing, float)


def test_overrides_replace_single_keys_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\nline = "pilotnet_small"\n')
    config = load_config(path, {"model.line": "model_0005_inceptionresnetv2", "capture.fps": "15"})
    assert config.model.line == "model_0005_inceptionresnetv2"
    assert config.capture.fps == 15
    with pytest.raises(ConfigError, match=r"capture\.fps must be between 1 and 240 \(got 0\)"):
        load_config(path, {"capture.fps": "0"})


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[model]\nlien = 'x'\n", ["unknown key 'model.lien'", "did you mean 'model.line'"]),
        ("[modle]\n", ["unknown key 'modle'", "did you mean 'model'"]),
        ("[capture]\nfps = 'fast'\n", ["capture.fps must be an integer", "got string 'fast'"]),
        ("[game]\nlaunch = 1\n", ["game.launch must be a boolean", "got integer 1"]),
        ("[capture]\nfps = true\n", ["capture.fps must be an integer", "got boolean True"]),
        ("[capture]\nfps = 0\n", ["capture.fps must be between 1 and 240", "got 0"]),
        (
            "[controller]\ndeadzone_steering = 1.5\n",
            ["deadzone_steering must be between 0.0 and 0.95"],
        ),
        ("[capture]\ncrop = [1, 2]\n", ["capture.crop must have 4 items", "got 2"]),
        (
            "[controller]\nbackend = 'vjoi'\n",
            ["controller.backend must be one of", "did you mean 'vjoy'"],
        ),
        ("[model]\nline = 'model_0005'\n", ["model.line must be one of"]),
        (
            "[hotkeys]\npause = 'ctrl+p'\n",
            ["hotkeys.pause must be a single character or a key name"],
        ),
        ("model = 3\n", ["model must be a table"]),
        ("[capture]\nfps = 30\n[capture\n", ["not valid TOML", "line 3"]),
    ],
)
def test_each_mistake_is_one_line_naming_file_and_key(
    tmp_path: Path, run_charles, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    result = run_charles("config", "check", "--config", str(path))
    assert result.returncode == 2
    assert_one_line_error(result, str(path), *fragments)


def test_missing_file(tmp_path: Path, run_charles) -> None:
    missing = tmp_path / "nope.toml"
    result = run_charles("model", "list", "--config", str(missing))
    assert result.returncode == 2
    assert_one_line_error(result, "config file not found", str(missing), "--config")


def test_bad_override_from_the_command_line(tmp_path: Path, run_charles) -> None:
    path = write(tmp_path, "")
    result = run_charles("config", "check", "--config", str(path), "--set", "capture.fsp=3")
    assert_one_line_error(result, "unknown key 'capture.fsp'", "did you mean 'capture.fps'")
    result = run_charles("config", "check", "--config", str(path), "--set", "capture.fps")
    assert_one_line_error(result, "expected KEY=VALUE")
    result = run_charles("model", "summary", "--config", str(path), "--model", "nope")
    assert_one_line_error(result, "model.line must be one of")


def test_check_prints_the_effective_values(tmp_path: Path, run_charles) -> None:
    path = write(tmp_path, "[capture]\nfps = 12\n")
    result = run_charles("config", "check", "--config", str(path), "--set", "model.store=/tmp/s")
    assert result.returncode == 0, result.stderr
    assert "capture.fps = 12" in result.stdout
    assert "model.store = '/tmp/s'" in result.stdout
