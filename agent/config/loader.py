"""config.toml -> a validated `Config`: reading the file, overrides, type and range checks.

Without a config.toml in the current folder (and no --config), the commented default config
that ships inside the package (agent/config/default_config.toml) is loaded instead: it is also
what `charles config init` writes and what the repository's config.toml is a copy of, so the
defaults a new user runs with, the file they edit and the file the README describes are one
text.

The dataclasses of agent/config/schema.py are what this module checks against: each field's
type (int, float, bool, str, a tuple of them, or a Literal of the words it takes) and its
`metadata` (range, length, key name). A mistake becomes one `ConfigError` line that names the
file, the key, what was expected and what was found, e.g.

    config.toml: capture.fps must be between 1 and 240 (got 0)

CLI flags override single keys (`--set model.line=pilotnet_small`, or a dedicated flag such as
`--model`); overrides are applied to the parsed TOML before validation, so they are checked by
exactly the same rules, and an error about an overridden key names the flag instead of the file:

    --set capture.fps: capture.fps must be between 1 and 240 (got 0)

Rules that span several keys (hotkeys that collide, a crop that leaves nothing) are checked
once the dataclasses are built. Every value an error quotes is shortened, so a hostile file
never turns into a huge error line.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import sys
import typing
import unicodedata
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from agent.config.schema import (
    MIN_PICTURE,
    PATH_MAX_LENGTH,
    SPECIAL_KEYS,
    CaptureConfig,
    Config,
    GameConfig,
)
from agent.errors import ConfigError, one_line, quoted, verbatim
from agent.files import (
    FileMissing,
    FileNotRegular,
    FileTooLarge,
    FileUnopenable,
    read_regular_file,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("config.toml")
"""Where a config is read from when no --config is given (the current folder)."""
DEFAULT_CONFIG_RESOURCE = "default_config.toml"
"""The commented default config, a file of this package (agent.config)."""
BUILT_IN_SOURCE = "built-in defaults"
"""`Config.source` (and the name in messages) when no config file was read."""

log = logging.getLogger(__name__)

# A config file is a page of text; anything bigger is a wrong --config (or /dev/zero).
MAX_CONFIG_BYTES = 1024 * 1024  # 1 MiB, as the message says
# About the longest value an error message quotes, so no error line is ever huge.
QUOTE_LIMIT = 60


class _Invalid(Exception):
    """A mistake in one or more keys; `load_config` prefixes where the first of them came from."""

    def __init__(self, keys: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.keys = keys


def load_config(
    path: Path | str | None = None,
    overrides: Mapping[str, str] | None = None,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Read, override and validate a config file.

    `path` None: ./config.toml when anything is at that name, else the built-in defaults
    (`default_config_text()`), said in one INFO line; a `path` given that does not exist is an
    error. `overrides` maps dotted keys ("model.line") to TOML value text ("'x'", "3", or a
    bare word, which is taken as a string). `origins` maps an overridden key to how the user
    gave it ("--model", "--set capture.fps"); an error about an overridden key starts with that
    origin instead of the file name (default "--set KEY"). Raises `ConfigError` with a
    one-line message on any problem.
    """
    if path is None and not _anything_at(DEFAULT_CONFIG_PATH):
        log.info(
            "no config file at %s: using the built-in defaults (`charles config init` writes "
            "them there, commented, to edit)",
            _absolute(DEFAULT_CONFIG_PATH),
        )
        source = BUILT_IN_SOURCE
        table = _loads(default_config_text())
    else:
        source = str(DEFAULT_CONFIG_PATH if path is None else path)
        table = _parse_file(Path(source), verbatim(source, 200))
    shown = verbatim(source, 200)
    overrides = overrides or {}
    try:
        for dotted, value_text in overrides.items():
            _apply_override(table, dotted, value_text)
        config = _build(Config, table, prefix="")
        _check_config(config)
    except _Invalid as problem:
        origin = _origin(problem.keys, overrides, origins or {}) or shown
        raise ConfigError(f"{origin}: {problem}") from None
    return dataclasses.replace(config, source=source)


def default_config_text() -> str:
    """The commented default config: every key with its default value and what it means.

    What `charles config init` writes and what runs when there is no config file; read from
    the installed package, so a wheel installed anywhere carries it.
    """
    resource = resources.files("agent.config").joinpath(DEFAULT_CONFIG_RESOURCE)
    return resource.read_text(encoding="utf-8")


def _anything_at(path: Path) -> bool:
    """Whether `path` names anything at all: a file, a folder, a link (even a dangling one).

    Anything there is read (and refused, when it is no config file) rather than passed over
    for the defaults.
    """
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except OSError:
        pass  # it cannot even be looked at: reading it says why
    return True


def _absolute(path: Path) -> Path:
    try:
        return path.absolute()
    except OSError:  # the current folder was deleted
        return path


def parse_override(text: str) -> tuple[str, str]:
    """Split a `--set KEY=VALUE` argument."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"--set {verbatim(text)}: expected KEY=VALUE, e.g. --set model.line=pilotnet_small"
        )
    return key.strip(), value.strip()


def _parse_file(path: Path, shown: str) -> dict[str, Any]:
    data = _read_untrusted_config_file(path, shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read config file {shown}: {error}") from None
    try:
        return _loads(text)
    except _BadToml as error:
        raise ConfigError(f"{shown}: not valid TOML: {error}") from None


def _read_untrusted_config_file(path: Path, shown: str) -> bytes:
    """The bytes of the config file at `path`, read without trusting what is there (through
    agent.files' one opener): a regular file (a device or a pipe would never end or would
    block) of at most MAX_CONFIG_BYTES, checked before reading and again on what was read. A
    config file may be a link: the user named it."""
    try:
        return read_regular_file(path, MAX_CONFIG_BYTES, follow_links=True)
    except FileMissing:
        raise ConfigError(
            f"config file not found: {shown} (check the --config path, or write the "
            f"commented default config there with: charles config init {shown})"
        ) from None
    except FileNotRegular:
        raise ConfigError(
            f"config file {shown} is not a regular file (a folder, device or pipe); "
            "pass --config with the path of a config.toml file"
        ) from None
    except FileTooLarge as error:
        size = MAX_CONFIG_BYTES + 1 if error.size is None else error.size
        raise ConfigError(_too_large(shown, size)) from None
    except FileUnopenable as error:  # its reason: the strerror, or a NUL in the path
        raise ConfigError(f"cannot read config file {shown}: {one_line(error.reason)}") from None
    except OSError as error:  # reading failed after the file opened
        raise ConfigError(f"cannot read config file {shown}: {_why(error)}") from None


def _why(error: Exception) -> str:
    # strerror leaves out the path, which the message already names (and may be long).
    return one_line((error.strerror if isinstance(error, OSError) else None) or str(error))


def _too_large(shown: str, size: int) -> str:
    return (
        f"config file {shown} is too large ({size} bytes; the limit is 1 MiB); "
        "pass --config with the path of a config.toml file"
    )


class _BadToml(Exception):
    """Text that tomllib refused, or that it cannot parse without crashing."""


def _loads(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _BadToml(str(error)) from None
    # tomllib lets these escape as they are: a number past Python's int-to-str digit limit
    # (ValueError) and arrays or inline tables nested thousands deep (RecursionError).
    except ValueError:
        raise _BadToml("a number has too many digits") from None
    except RecursionError:
        raise _BadToml("arrays or tables are nested too deeply") from None


def _apply_override(table: dict[str, Any], dotted: str, value_text: str) -> None:
    value = _override_value(dotted, value_text)
    *parents, leaf = dotted.split(".")
    node = table
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _Invalid(
                (dotted,), f"cannot override {verbatim(dotted)}: {verbatim(part)} is not a table"
            )
        node = child
    node[leaf] = value


def _override_value(dotted: str, value_text: str) -> Any:
    """The TOML value `value_text` stands for; a bare word such as pilotnet_small is a string."""
    try:
        parsed = _loads(f"v = {value_text}")
    except _BadToml as error:
        # Text that starts like a TOML string, array or table was meant as one: taking it as a
        # bare word would keep its quotes ("C:\Games" has a bad escape) as part of the value.
        if value_text[:1] in ("'", '"', "[", "{"):
            reason = re.sub(r" \(at [^)]*\)$", "", str(error))  # its place is in "v = ..."
            fix = {
                "[": "write an array such as [1280, 720]",
                "{": "write a table such as {fps = 30}",
            }.get(
                value_text[0],
                "write text in single quotes, which keep backslashes as they are, e.g. 'C:\\Games'",
            )
            raise _Invalid(
                (dotted,),
                f"cannot read the value {quoted(value_text, QUOTE_LIMIT)}: {reason}; {fix}",
            ) from None
        return value_text
    # More keys than v: text that smuggles in `x = 2` after a newline is no single value.
    return parsed["v"] if parsed.keys() == {"v"} else value_text


def _origin(
    keys: tuple[str, ...], overrides: Mapping[str, str], origins: Mapping[str, str]
) -> str | None:
    """How the user gave the first of `keys` that an override touched.

    An override of the key itself, of a table above it (`--set capture={fps=0}`) or of a key
    below it (`--set capture.fps.x=1` turns capture.fps into a table) counts.
    """
    for key in keys:
        base = key.split("[", 1)[0]  # "game.region[2]" was given as game.region
        for dotted in reversed(list(overrides)):
            if base == dotted or base.startswith(f"{dotted}.") or dotted.startswith(f"{base}."):
                return verbatim(origins.get(dotted) or f"--set {dotted}", 120)
    return None


def _toml_type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


def _build(cls: type, table: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in table:
        if key not in known:
            where = f"{prefix}{key}"
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            valid = ", ".join(known)
            raise _Invalid(
                (where,),
                f"unknown key {quoted(where, QUOTE_LIMIT)}{hint}; valid keys here: {valid}",
            )
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name not in table:
            continue
        where = f"{prefix}{name}"
        value = table[name]
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise _Invalid(
                    (where,),
                    f"{where} must be a table [{where}] "
                    f"(got {_toml_type_name(value)} {quoted(value, QUOTE_LIMIT)})",
                )
            values[name] = _build(kind, value, prefix=f"{where}.")
        else:
            values[name] = _check_value(value, kind, spec.metadata, where)
    return cls(**values)


def _check_value(value: Any, kind: Any, rules: Mapping[str, Any], where: str) -> Any:
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise _Invalid(
                (where,),
                f"{where} must be an array of {item_kind.__name__} "
                f"(got {_toml_type_name(value)} {quoted(value, QUOTE_LIMIT)})",
            )
        lengths = rules.get("lengths")
        if lengths and len(value) not in lengths:
            expected = " or ".join(str(n) for n in lengths)
            raise _Invalid(
                (where,),
                f"{where} must have {expected} items "
                f"(got {len(value)}: {quoted(value, QUOTE_LIMIT)})",
            )
        return tuple(_check_scalar(v, item_kind, rules, f"{where}[{i}]")
                     for i, v in enumerate(value))  # fmt: skip
    return _check_scalar(value, kind, rules, where)


def _check_scalar(value: Any, kind: Any, rules: Mapping[str, Any], where: str) -> Any:
    # A Literal field takes one of its words: it is text first, then one of them.
    choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else ()
    if choices:  # every Literal of the schema lists words
        kind = str
    # bool is a subclass of int in Python, but `fps = true` is a mistake, not 1.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (
        (kind is float and is_number)
        or (kind is int and is_number and isinstance(value, int))
        or (kind is bool and isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    ):
        expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
        raise _Invalid(
            (where,),
            f"{where} must be {expected[kind]} "
            f"(got {_toml_type_name(value)} {quoted(value, QUOTE_LIMIT)})",
        )
    if is_number:
        return _check_number(value, kind, rules, where)
    if kind is str:
        return _check_text(value, rules, where, choices)
    return value


def _check_number(value: float, kind: type, rules: Mapping[str, Any], where: str) -> float:
    # TOML has nan and inf; both slip through every range comparison below.
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid((where,), f"{where} must be a finite number (got {value!r})")
    low, high = rules.get("minimum"), rules.get("maximum")
    # Compared before any float(): a 400-digit integer is out of range, not an OverflowError.
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Invalid(
            (where,), f"{where} must be between {low} and {high} (got {quoted(value, QUOTE_LIMIT)})"
        )
    return float(value) if kind is float else value


def _check_text(value: str, rules: Mapping[str, Any], where: str, choices: tuple[str, ...]) -> str:
    """`value` checked as plain text, then as a key name or one of `choices` where the field
    takes one."""
    limit = rules.get("max_length") or PATH_MAX_LENGTH
    if len(value) > limit:
        raise _Invalid(
            (where,),
            f"{where} must be at most {limit} characters (got {quoted(value, QUOTE_LIMIT)})",
        )
    # Control characters break one-line messages and paths (NUL); lone surrogates (from
    # undecodable command-line bytes) cannot even be printed.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise _Invalid(
            (where,),
            f"{where} must be plain text without control characters such as newlines or tabs "
            f"(got {quoted(value, QUOTE_LIMIT)})",
        )
    if rules.get("key_name"):
        if not ((len(value) == 1 and not value.isspace()) or value.lower() in SPECIAL_KEYS):
            hint = "; write space for the space bar" if value.isspace() else ""
            raise _Invalid(
                (where,),
                f"{where} must be a single character or a key name such as f8, esc, space, up "
                f"(got {quoted(value, QUOTE_LIMIT)}{hint})",
            )
        return value
    if value == "" and rules.get("may_be_empty"):
        return value
    if not value.strip():
        raise _Invalid(
            (where,), f"{where} must not be empty or blank (got {quoted(value, QUOTE_LIMIT)})"
        )
    if choices and value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        options = ", ".join(f"'{c}'" for c in choices)
        raise _Invalid(
            (where,), f"{where} must be one of {options}; got {quoted(value, QUOTE_LIMIT)}{hint}"
        )
    return value


def _check_config(config: Config) -> None:
    """Rules that span several keys, checked on the built dataclasses."""
    _check_keys(config)
    _check_title_rule(config.game)
    _check_region(config.game.region)
    _check_crop(config.capture)


def _check_keys(config: Config) -> None:
    """Every hotkey and driving key is a different key (names compare case-insensitively)."""
    hotkeys = {
        "hotkeys.pause": config.hotkeys.pause,
        "hotkeys.quit": config.hotkeys.quit,
        "hotkeys.swap": config.hotkeys.swap,
        "hotkeys.record": config.hotkeys.record,
    }
    keyboard = config.controller.keyboard
    driving = {
        "controller.keyboard.accelerate": keyboard.accelerate,
        "controller.keyboard.brake": keyboard.brake,
        "controller.keyboard.left": keyboard.left,
        "controller.keyboard.right": keyboard.right,
    }
    seen: dict[str, str] = {}
    names = {**hotkeys, **driving}
    for where, name in names.items():
        first = seen.setdefault(name.lower(), where)
        if first == where:
            continue
        both = (
            f"{first} {quoted(names[first], QUOTE_LIMIT)} and {where} {quoted(name, QUOTE_LIMIT)}"
        )
        if where in hotkeys:
            fix = "one key would do two things: give each hotkey its own key"
        elif first in hotkeys:
            fix = (
                f"the keyboard backend would press its own hotkey: give {first} a key "
                "the car is not driven with"
            )
        else:
            fix = "give each driving key of [controller.keyboard] its own key"
        # Name the key given second first, so a command-line override is the origin shown.
        raise _Invalid((where, first), f"{both} are the same key (key names ignore case); {fix}")


def _check_title_rule(game: GameConfig) -> None:
    if game.match == "substring" and not game.process:
        raise _Invalid(
            ("game.match", "game.process"),
            'game.match = "substring" needs game.process, the file name of the game\'s program '
            '(for GTA V "GTA5.exe"): a window whose title merely contains game.title (a browser '
            'tab, an editor) must never get keys; or use game.match = "exact"',
        )


def _check_region(region: tuple[int, ...]) -> None:
    if region and (region[2] < 1 or region[3] < 1):
        raise _Invalid(
            ("game.region",),
            f"game.region {list(region)} must have a positive width and height "
            "([left, top, width, height] in pixels), or be [] to find the window by title",
        )


def _check_crop(capture: CaptureConfig) -> None:
    width, height = capture.size
    top, right, bottom, left = capture.crop
    kept_width, kept_height = width - left - right, height - top - bottom
    if kept_width < MIN_PICTURE or kept_height < MIN_PICTURE:
        raise _Invalid(
            ("capture.crop", "capture.size"),
            f"capture.crop {list(capture.crop)} (top, right, bottom, left) leaves "
            f"{max(kept_width, 0)}x{max(kept_height, 0)} pixels of the {width}x{height} "
            f"capture.size; leave at least {MIN_PICTURE}x{MIN_PICTURE}",
        )
