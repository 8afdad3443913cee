"""config.toml: the committed file is valid, and every class of mistake is one clear line."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import typing
from dataclasses import Field
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import (
    BUILT_IN_SOURCE,
    Config,
    default_config_text,
    load_config,
    parse_override,
)
from agent.errors import ConfigError
from agent.nets.registry import LINE_NAMES, LineName
from tests.helpers.charles import REPO, assert_one_line_error
from tests.helpers.disks import fill, small_filesystem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


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
    assert_one_line_error(
        result, "config file not found", str(missing), "--config", "charles config init"
    )


def test_bad_override_from_the_command_line(tmp_path: Path, run_charles) -> None:
    path = write(tmp_path, "")
    result = run_charles("config", "check", "--config", str(path), "--set", "capture.fsp=3")
    assert_one_line_error(result, "unknown key 'capture.fsp'", "did you mean 'capture.fps'")
    result = run_charles("config", "check", "--config", str(path), "--set", "capture.fps")
    assert_one_line_error(result, "expected KEY=VALUE")
    result = run_charles("model", "summary", "--config", str(path), "--model", "nope")
    line = assert_one_line_error(result, "model.line must be one of")
    # The flag is named, not the file, which is not at fault.
    assert line.startswith("charles: error: --model: ") and str(path) not in line
    result = run_charles("config", "check", "--config", str(path), "--set", "capture.fps=0")
    line = assert_one_line_error(result, "capture.fps must be between 1 and 240")
    assert line.startswith("charles: error: --set capture.fps: ")


def test_check_prints_the_effective_values(tmp_path: Path, run_charles) -> None:
    path = write(tmp_path, "[capture]\nfps = 12\n")
    result = run_charles("config", "check", "--config", str(path), "--set", "model.store=/tmp/s")
    assert result.returncode == 0, result.stderr
    assert "capture.fps = 12" in result.stdout
    assert "model.store = '/tmp/s'" in result.stdout


def error_of(tmp_path: Path, text: str, overrides: dict[str, str] | None = None) -> str:
    """The one-line message load_config raises for `text` (and overrides)."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), overrides or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_committed_config_documents_every_key() -> None:
    table = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))

    def keys(node: dict[str, object], prefix: str = "") -> set[str]:
        found = set()
        for name, value in node.items():
            found |= keys(value, f"{prefix}{name}.") if isinstance(value, dict) else {prefix + name}
        return found

    expected = {
        key
        for key in flatten(Config())
        if key != "source"  # not a TOML key
    }
    assert keys(table) == expected


def flatten(config: object, prefix: str = "") -> dict[str, object]:
    values: dict[str, object] = {}
    for item in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            values.update(flatten(value, f"{prefix}{item.name}."))
        else:
            values[prefix + item.name] = value
    return values


def schema_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, Field[Any]]]:
    """Every key of the schema: (dotted key, its type, its dataclass field)."""
    found = []
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            found += schema_fields(kind, f"{prefix}{item.name}.")
        elif not item.metadata.get("internal"):
            found.append((prefix + item.name, kind, item))
    return found


LITERAL_KEYS = {
    key: typing.get_args(kind)
    for key, kind, _ in schema_fields()
    if typing.get_origin(kind) is typing.Literal
}
"""Every key that takes one of a few words -> those words, read from its Literal type."""


def test_every_field_has_bounds() -> None:
    """Numbers have a range, strings a length and Literals their words, so no value is
    unbounded."""
    for key, kind, item in schema_fields():
        if typing.get_origin(kind) is tuple:  # an array: each item is checked
            kind = typing.get_args(kind)[0]
        if kind in (int, float):
            assert item.metadata["minimum"] is not None, key
            assert item.metadata["maximum"] is not None, key
        elif kind is str:
            assert 0 < item.metadata["max_length"] <= 4096, key
        elif typing.get_origin(kind) is typing.Literal:
            assert all(isinstance(word, str) for word in typing.get_args(kind)), key
        else:
            assert kind is bool, (key, kind)


def test_the_keys_that_take_words_are_literals() -> None:
    # The loader finds a key's words in its Literal type alone: a choice declared any other
    # way would go unchecked.
    assert set(LITERAL_KEYS) == {
        "game.match", "model.line", "inference.backend", "inference.provider",
        "controller.backend", "swap.policy", "record.mode", "record.encoder",
        "collect.source", "collect.render", "train.strategy", "train.start_from",
    }  # fmt: skip
    assert LITERAL_KEYS["swap.policy"] == ("immediate", "on_unstuck", "manual", "off")
    # model.line takes exactly the registered lines, in the registry's order.
    assert typing.get_args(LineName) == LINE_NAMES


@pytest.mark.parametrize("key", sorted(LITERAL_KEYS))
def test_a_literal_key_takes_each_of_its_words_and_nothing_else(tmp_path: Path, key: str) -> None:
    words = LITERAL_KEYS[key]
    path = write(tmp_path, "")
    section, name = key.split(".")
    for word in words:
        # A substring title rule needs the game's program (a rule across keys).
        config = load_config(path, {key: f"'{word}'", "game.process": "'game.exe'"})
        assert getattr(getattr(config, section), name) == word
    listed = ", ".join(f"'{word}'" for word in words)
    message = error_of(tmp_path, "", {key: "'zzzz'"})
    assert message == f"--set {key}: {key} must be one of {listed}; got 'zzzz'"


def test_a_word_outside_the_choices_is_one_line_listing_them(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[swap]\npolicy = 'manuel'\n")
    assert message == (
        f"{tmp_path / 'config.toml'}: swap.policy must be one of 'immediate', 'on_unstuck', "
        "'manual', 'off'; got 'manuel' (did you mean 'manual'?)"
    )
    message = error_of(tmp_path, "[model]\nline = 'pilotnet'\n")
    assert message.endswith(
        "model.line must be one of 'model_0005_inceptionresnetv2', 'pilotnet_small'; "
        "got 'pilotnet' (did you mean 'pilotnet_small'?)"
    )
    # Words are text first: a number or a blank is said to be so.
    assert "record.mode must be a string (got integer 1)" in error_of(
        tmp_path, "[record]\nmode = 1\n"
    )
    message = error_of(tmp_path, "[record]\nmode = ' '\n")
    assert "record.mode must not be empty or blank (got ' ')" in message


def test_the_packaged_default_sets_and_explains_every_literal_key() -> None:
    """Each key that takes words is in the commented default with its default word, and the
    comment just above it names every word it takes, so the file a user edits lists them."""
    text = default_config_text()
    table = tomllib.loads(text)
    comments: dict[str, str] = {}
    section, above = "", []
    for line in text.splitlines():
        if line.startswith("["):
            section, above = line.strip("[]"), []
        elif line.startswith("#"):
            above.append(line)
        elif "=" in line:
            comments[f"{section}.{line.split('=')[0].strip()}"] = "\n".join(above)
            above = []
    defaults = flatten(Config())
    for key, words in LITERAL_KEYS.items():
        section, name = key.split(".")
        assert table[section][name] == defaults[key], key
        assert defaults[key] in words, key
        for word in words:
            assert f'"{word}"' in comments[key], (key, word)


@pytest.mark.parametrize(
    "text",
    [
        "[controller]\nsmoothing = nan\n",
        "[controller]\ndeadzone_throttle = +nan\n",
        "[controller]\ndeadzone_steering = inf\n",
        "[controller]\nhold = -inf\n",
        "[controller.keyboard]\npulse_period = nan\n",
    ],
)
def test_nan_and_infinity_are_refused(tmp_path: Path, text: str) -> None:
    assert "must be a finite number (got " in error_of(tmp_path, text)


def test_nan_from_the_command_line_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, "", {"controller.smoothing": "nan"})
    assert message == (
        "--set controller.smoothing: controller.smoothing must be a finite number (got nan)"
    )


def test_huge_numbers_are_one_line_errors(tmp_path: Path) -> None:
    # A 400-digit integer cannot become a float (OverflowError); 5000 digits is past Python's
    # int parsing limit inside tomllib (ValueError); both used to be tracebacks.
    message = error_of(tmp_path, f"[controller]\nsmoothing = {'9' * 400}\n")
    assert "controller.smoothing must be between 0.0 and 0.99" in message
    assert message.endswith(f"(got {'9' * 57}... (400 digits))")
    message = error_of(tmp_path, f"[capture]\nfps = {'9' * 5000}\n")
    assert "not valid TOML: a number has too many digits" in message
    message = error_of(tmp_path, f"[game]\nregion = [0, 0, {10**30}, 10]\n")
    assert "game.region[2] must be between -32768 and 32768" in message


def test_deep_nesting_is_a_one_line_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, "v = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "not valid TOML: arrays or tables are nested too deeply" in message


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "[hotkeys]\npause = 'f8'\nquit = 'F8'\n",
            ["hotkeys.pause 'f8' and hotkeys.quit 'F8' are the same key", "its own key"],
        ),
        (
            "[hotkeys]\nswap = 'F10'\n",
            ["hotkeys.quit 'f10' and hotkeys.swap 'F10' are the same key", "its own key"],
        ),
        (
            "[hotkeys]\npause = 'W'\n",
            [
                "hotkeys.pause 'W' and controller.keyboard.accelerate 'w' are the same key",
                "would press its own hotkey: give hotkeys.pause a key",
            ],
        ),
        (
            "[controller.keyboard]\nright = 'F10'\n",
            ["hotkeys.quit 'f10' and controller.keyboard.right 'F10' are the same key"],
        ),
        (
            "[controller.keyboard]\nleft = 'Up'\nright = 'UP'\n",
            [
                "controller.keyboard.left 'Up' and controller.keyboard.right 'UP' are the same",
                "its own key",
            ],
        ),
    ],
)
def test_colliding_keys_are_refused(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'config.toml'}: ")
    for fragment in fragments:
        assert fragment in message


def test_distinct_keys_in_any_case_are_accepted(tmp_path: Path) -> None:
    text = "[hotkeys]\npause = 'P'\nquit = 'Esc'\n[controller.keyboard]\nleft = 'Left'\n"
    config = load_config(write(tmp_path, text))
    assert (config.hotkeys.pause, config.controller.keyboard.left) == ("P", "Left")


def test_a_blank_key_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[hotkeys]\npause = ' '\n")
    assert "hotkeys.pause must be a single character or a key name" in message
    assert "write space for the space bar" in message


def accepted_or_refused(tmp_path: Path, text: str, fragment: str | None) -> None:
    """`text` loads when `fragment` is None, else its one error line contains `fragment`."""
    if fragment is None:
        load_config(write(tmp_path, text))
    else:
        assert fragment in error_of(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[game]\ntitle = ''\n", "game.title must not be empty or blank (got '')"),
        ("[game]\ntitle = '   '\n", "game.title must not be empty or blank (got '   ')"),
        ("[model]\nstore = ''\n", "model.store must not be empty or blank"),
        ("[game]\ntitle = 'a\\b'\n", None),  # a backslash is fine
        ('[game]\ntitle = "a\\nb"\n', "game.title must be plain text without control"),
        ('[model]\nstore = "a\\u0000b"\n', "model.store must be plain text without control"),
    ],
)
def test_strings_must_be_plain_non_blank_text(
    tmp_path: Path, text: str, fragment: str | None
) -> None:
    accepted_or_refused(tmp_path, text, fragment)


def test_long_values_are_refused_and_shortened_in_messages(tmp_path: Path) -> None:
    message = error_of(tmp_path, f"[game]\ntitle = '{'x' * 1_000_000}'\n")
    assert "game.title must be at most 200 characters" in message
    assert "... (1000000 characters))" in message
    assert len(message) < 250
    load_config(write(tmp_path, f"[game]\ntitle = '{'x' * 200}'\n"))
    message = error_of(tmp_path, f"[model]\ncheckpoint = '{'c' * 5000}'\n")
    assert "model.checkpoint must be at most 4096 characters" in message


@pytest.mark.parametrize(
    "text",
    [
        f"[model]\nline = '{'x' * 100_000}'\n",
        f"[capture]\nfps = '{'x' * 100_000}'\n",
        f"[capture]\ncrop = [{', '.join(['1'] * 50_000)}]\n",
        f"[game]\nregion = [{{ a = '{'x' * 100_000}' }}, 0, 1, 1]\n",
        f"[hotkeys]\npause = '{'x' * 4000}'\n",
        f'"{"k" * 100_000}" = 1\n',
        f"[game]\nlaunch = '{'x' * 100_000}'\n",
        f"game = '{'x' * 100_000}'\n",
    ],
)
def test_no_error_line_is_huge(tmp_path: Path, text: str) -> None:
    # The longest names the file (pytest's temporary path, ~90 characters) and lists the tables.
    assert len(error_of(tmp_path, text)) < 350


def test_record_keys_are_read_and_checked(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "[record]\nenabled = true\nfolder = 'v'\nfps = 60\nhud = false\n"
              "mode = 'layout'\nencoder = 'libx264'\nnice = 0\n")
    )  # fmt: skip
    record = config.record
    assert (record.enabled, record.folder, record.fps, record.hud) == (True, "v", 60, False)
    assert (record.mode, record.encoder, record.nice) == ("layout", "libx264", 0)
    message = error_of(tmp_path, "[record]\nmode = 'layot'\n")
    assert "record.mode must be one of 'hud', 'layout'" in message
    assert "did you mean 'layout'" in message
    assert "record.fps must be between 1 and 120" in error_of(tmp_path, "[record]\nfps = 0\n")
    message = error_of(tmp_path, "[hotkeys]\nrecord = 'f8'\n")
    assert "hotkeys.pause 'f8' and hotkeys.record 'f8' are the same key" in message


def test_errors_name_the_flag_an_overridden_key_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "[capture]\nfps = 30\n")
    origins = {"model.line": "--model", "capture.fps": "--set capture.fps"}
    cases = [
        ({"capture.fps": "0"}, "--set capture.fps: capture.fps must be between 1 and 240 (got 0)"),
        ({"model.line": '"nope"'}, "--model: model.line must be one of "),
        # Not in origins: the plain --set form.
        ({"capture.size": "[1, 2, 3]"}, "--set capture.size: capture.size must have 2 items"),
        ({"capture.fsp": "3"}, "--set capture.fsp: unknown key 'capture.fsp'"),
        ({"game.region": "[0, 0, 1, 1e9]"}, "--set game.region: game.region[3] must be"),
        ({"capture": "{fps = 0}"}, "--set capture: capture.fps must be between"),
        ({"capture.fps.x": "1"}, "--set capture.fps.x: cannot override capture.fps.x: fps is not"),
        # An override below a key turns it into a table: still the override's fault.
        ({"model.line.x": "1"}, "--set model.line.x: model.line must be a string (got table"),
        ({"hotkeys.quit": "F8"}, "--set hotkeys.quit: hotkeys.pause 'f8' and hotkeys.quit"),
    ]
    for overrides, start in cases:
        with pytest.raises(ConfigError) as caught:
            load_config(path, overrides, origins)
        assert str(caught.value).startswith(start), (overrides, str(caught.value))
    # A mistake in the file itself still names the file, whatever else was overridden.
    bad = write(tmp_path, "[capture]\nfps = 0\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: capture\.fps must be"):
        load_config(bad, {"model.line": '"pilotnet_small"'}, origins)


def test_an_override_value_is_one_value(tmp_path: Path) -> None:
    # "1\nx = 2" is two TOML keys; taking the first would silently drop the rest.
    message = error_of(tmp_path, "", {"capture.fps": "1\nx = 2"})
    assert message == "--set capture.fps: capture.fps must be an integer (got string '1\\nx = 2')"


def test_a_long_set_argument_is_shortened() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_override("x" * 100_000)
    assert "expected KEY=VALUE" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_config_path_must_be_a_small_regular_file(tmp_path: Path) -> None:
    for path in (Path(os.devnull), tmp_path):
        with pytest.raises(ConfigError, match="is not a regular file"):
            load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("a\0b")  # a NUL in the path: ValueError from the OS layer
    big = tmp_path / "big.toml"
    big.write_text("#" * (1024 * 1024) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is too large \(1048577 bytes; the limit is 1 MiB\)"):
        load_config(big)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, run_charles) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    result = run_charles("config", "check", "--config", str(fifo), timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result, f"config file {fifo} is not a regular file", "--config")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "[game]\nregion = [0, 0, -5, 10]\n",
            "game.region [0, 0, -5, 10] must have a positive width and height",
        ),
        ("[game]\nregion = [-100, -20, 640, 480]\n", None),  # a screen left of the main one
        (
            "[capture]\ncrop = [700, 0, 20, 0]\n",
            "capture.crop [700, 0, 20, 0] (top, right, bottom, left) leaves 1280x0 pixels of "
            "the 1280x720 capture.size; leave at least 16x16",
        ),
        ("[capture]\nsize = [64, 64]\ncrop = [24, 24, 24, 24]\n", None),
    ],
)
def test_region_and_crop_must_leave_a_picture(
    tmp_path: Path, text: str, fragment: str | None
) -> None:
    accepted_or_refused(tmp_path, text, fragment)


def test_controller_hold(tmp_path: Path) -> None:
    assert Config().controller.hold == 1.0
    assert load_config(write(tmp_path, "[controller]\nhold = 0.5\n")).controller.hold == 0.5
    for bad in ("0.05", "11"):
        message = error_of(tmp_path, f"[controller]\nhold = {bad}\n")
        assert "controller.hold must be between 0.1 and 10.0" in message


def test_a_broken_quoted_override_is_not_taken_as_a_bare_word(tmp_path: Path) -> None:
    # "C:\Games" in double quotes has a bad escape; it used to become the text with its quotes.
    message = error_of(tmp_path, "", {"model.store": '"C:\\Games"'})
    assert message.startswith("--set model.store: cannot read the value '\"C:\\\\Games\"'")
    assert "write text in single quotes" in message
    config = load_config(write(tmp_path, ""), {"model.store": "'C:\\Games'"})
    assert config.model.store == "C:\\Games"


def test_a_substring_title_rule_needs_the_games_program(tmp_path: Path) -> None:
    """A title that merely contains game.title (a browser tab) must never get keys, so a loose
    title needs the game's executable named too; the default is the exact title."""
    assert load_config(write(tmp_path, "")).game.match == "exact"
    message = error_of(tmp_path, '[game]\ntitle = "Grand Theft Auto V"\nmatch = "substring"\n')
    assert 'game.match = "substring" needs game.process' in message
    assert '"GTA5.exe"' in message
    loose = '[game]\nmatch = "substring"\nprocess = "GTA5.exe"\n'
    assert load_config(write(tmp_path, loose)).game.process == "GTA5.exe"
    assert "game.process" in error_of(tmp_path, '[game]\nprocess = "  "\n')


# Without a config file: the built-in defaults, and `charles config init` to write them out.
# The packaged agent/default_config.toml is the one text behind both, and the repository's
# config.toml is a copy of it; the dataclass defaults (for keys a file leaves out) must parse
# out of it exactly.


def charles_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """`charles ARGS` run in this process (so mutation testing sees it), as a finished run."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["charles", *args], status, out, err)


def test_the_repository_config_is_the_packaged_default() -> None:
    assert (REPO / "config.toml").read_text(encoding="utf-8") == default_config_text()


def test_without_a_config_file_the_built_in_defaults_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="agent.config"):
        config = load_config()
    assert config == Config()
    assert config.source == BUILT_IN_SOURCE
    assert [record.levelno for record in caplog.records] == [logging.INFO]
    said = caplog.records[0].getMessage()
    assert str(tmp_path / "config.toml") in said and "charles config init" in said
    # Overrides apply to the defaults by the same rules, and name their flag when wrong.
    assert load_config(None, {"capture.fps": "20"}).capture.fps == 20
    with pytest.raises(ConfigError, match=r"^--set capture\.fps: capture\.fps must be between"):
        load_config(None, {"capture.fps": "0"})


def test_a_deleted_current_folder_gets_the_defaults_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with caplog.at_level(logging.INFO, logger="agent.config"):
        assert load_config() == Config()
    assert "no config file at config.toml" in caplog.records[0].getMessage()


def test_a_new_user_sees_the_defaults_and_one_info_line(tmp_path: Path, run_charles) -> None:
    result = run_charles("config", "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{BUILT_IN_SOURCE}: OK\n")
    info = [line for line in result.stderr.splitlines() if line.startswith("INFO")]
    assert len(info) == 1, result.stderr
    assert str(tmp_path / "config.toml") in info[0] and "charles config init" in info[0]
    committed = run_charles("config", "check", "--config", str(REPO / "config.toml"))
    assert result.stdout.splitlines()[1:] == committed.stdout.splitlines()[1:]


def test_anything_at_the_default_path_is_read_not_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    default = tmp_path / "config.toml"
    default.mkdir()
    with pytest.raises(ConfigError, match=r"config file config\.toml is not a regular file"):
        load_config()
    default.rmdir()
    default.symlink_to(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError, match=r"config file not found: config\.toml"):
        load_config()
    default.unlink()
    default.write_text("[capture]\nfps = 12\n", encoding="utf-8")
    config = load_config()
    assert config.capture.fps == 12 and config.source == "config.toml"


def test_a_config_path_given_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = charles_here(capsys, "config", "check", "--config", "config.toml")
    assert result.returncode == 2
    assert_one_line_error(result, "config file not found: config.toml", "--config")


def test_config_init_writes_the_commented_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = charles_here(capsys, "config", "init")
    assert result.returncode == 0, result.stderr
    assert "charles config check" in result.stdout
    written = tmp_path / "config.toml"
    text = written.read_text(encoding="utf-8")
    assert text == default_config_text()
    assert text.count("\n# ") > 100  # the commented file, not a bare list of values
    # It parses to exactly the defaults, and the next start reads it instead of them.
    assert load_config(written) == Config()
    assert load_config().source == "config.toml"
    elsewhere = tmp_path / "gta.toml"
    result = charles_here(capsys, "config", "init", str(elsewhere))
    assert result.returncode == 0, result.stderr
    assert f"charles config check --config {elsewhere}" in result.stdout
    result = charles_here(capsys, "config", "check", "--config", str(elsewhere))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{elsewhere}: OK\n")


@pytest.mark.parametrize("planted", ["file", "folder", "link to a file", "dangling link"])
def test_config_init_never_replaces_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], planted: str
) -> None:
    target = tmp_path / "mine.toml"
    other = tmp_path / "notes.txt"
    other.write_text("keep me", encoding="utf-8")
    if planted == "file":
        target.write_text("keep me", encoding="utf-8")
    elif planted == "folder":
        target.mkdir()
    elif planted == "link to a file":
        target.symlink_to(other)
    else:
        target.symlink_to(tmp_path / "nowhere.toml")
    result = charles_here(capsys, "config", "init", str(target))
    assert result.returncode == 1
    assert_one_line_error(result, str(target), "already exists", "another PATH")
    assert other.read_text(encoding="utf-8") == "keep me"
    if planted == "file":
        assert target.read_text(encoding="utf-8") == "keep me"
    elif planted == "folder":
        assert list(target.iterdir()) == []
    else:
        assert target.is_symlink() and not (tmp_path / "nowhere.toml").exists()


def test_config_init_into_a_missing_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing" / "config.toml"
    result = charles_here(capsys, "config", "init", str(target))
    assert_one_line_error(result, f"cannot write {target}", "No such file or directory")
    assert not target.parent.exists()


def test_config_init_onto_a_full_disk_leaves_no_half_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with small_filesystem(1 << 20) as disk:
        fill(disk, leave_bytes=4096)
        result = charles_here(capsys, "config", "init", str(disk / "config.toml"))
        assert_one_line_error(result, f"cannot write {disk / 'config.toml'}", "No space left")
        assert not (disk / "config.toml").exists()


def test_config_check_never_prints_the_stream_key_or_the_live_token(
    tmp_path: Path, run_charles
) -> None:
    path = write(
        tmp_path,
        "[stream]\nurl = 'rtmp://live.example/app/sk_live_SECRETKEY'\n"
        "[live]\ntoken = 'tok-SECRET'\n",
    )
    result = run_charles("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "SECRET" not in result.stdout + result.stderr
    assert "stream.url = 'rtmp://live.example/app/****'" in result.stdout
    assert "live.token = '****'" in result.stdout
    assert "SECRET" not in repr(load_config(path))
