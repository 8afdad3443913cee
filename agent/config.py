"""config.toml -> frozen, validated dataclasses.

The dataclasses below are the schema: each field's type and `metadata` (range, choices, length)
are what the loader checks. A mistake becomes one `ConfigError` line that names the file, the
key, what was expected and what was found, e.g.

    config.toml: capture.fps must be between 1 and 240 (got 0)

CLI flags override single keys (`--set model.line=pilotnet_small`, or a dedicated flag such as
`--model`); overrides are applied to the parsed TOML before validation, so they are checked by
exactly the same rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.nets.registry import LINE_NAMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("config.toml")

# Key names pynput knows besides single characters (pynput.keyboard.Key members we allow).
SPECIAL_KEYS = frozenset(
    [f"f{n}" for n in range(1, 21)]
    + [
        "esc", "space", "enter", "tab", "backspace", "delete", "insert", "home", "end",
        "page_up", "page_down", "up", "down", "left", "right", "pause", "scroll_lock",
        "print_screen", "shift", "ctrl", "alt",
    ]
)  # fmt: skip


def _spec(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    lengths: tuple[int, ...] | None = None,
    key_name: bool = False,
) -> dict[str, Any]:
    """Validation rules for one field, stored in its dataclass metadata."""
    return {
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "lengths": lengths,
        "key_name": key_name,
    }


@dataclass(frozen=True)
class GameConfig:
    """Which window is the game."""

    title: str = field(default="Charles CarRacing", metadata=_spec())
    """Window title to look for."""
    match: str = field(default="substring", metadata=_spec(choices=("exact", "substring")))
    """How `title` is compared with window titles."""
    region: tuple[int, ...] = field(default=(), metadata=_spec(lengths=(0, 4)))
    """Explicit screen region [left, top, width, height] in pixels; empty: use the window."""
    launch: bool = field(default=True, metadata=_spec())
    """Start the bundled game when no window matches (only for the bundled game's title)."""
    channel_port: int = field(default=47800, metadata=_spec(minimum=1024, maximum=65535))
    """Loopback UDP port of the bundled game's virtual gamepad (controller backend "game")."""


@dataclass(frozen=True)
class CaptureConfig:
    """How frames are grabbed."""

    fps: int = field(default=30, metadata=_spec(minimum=1, maximum=240))
    """Frames grabbed per second."""
    size: tuple[int, ...] = field(
        default=(1280, 720), metadata=_spec(lengths=(2,), minimum=16, maximum=7680)
    )
    """Size [width, height] the game renders at; frames of another size are scaled to it first."""
    crop: tuple[int, ...] = field(
        default=(0, 0, 0, 0), metadata=_spec(lengths=(4,), minimum=0, maximum=7680)
    )
    """Pixels removed [top, right, bottom, left] from a frame of `size` before resizing."""


@dataclass(frozen=True)
class ModelConfig:
    """Which network drives and where its checkpoints live."""

    line: str = field(default="pilotnet_small", metadata=_spec(choices=LINE_NAMES))
    """Model line (architecture) name."""
    pretrained: str = field(default="none", metadata=_spec())
    """Backbone start: "none" (random), "imagenet" (Keras download) or a local weights file."""
    store: str = field(default="models", metadata=_spec())
    """Model store folder: <store>/<line>/<version>/ holds weights and manifest.json."""
    checkpoint: str = field(default="latest", metadata=_spec())
    """"latest" (newest in the store, else fresh weights), "none", a version name or a file."""


@dataclass(frozen=True)
class KeyboardConfig:
    """Keys the keyboard backend presses."""

    accelerate: str = field(default="w", metadata=_spec(key_name=True))
    brake: str = field(default="s", metadata=_spec(key_name=True))
    left: str = field(default="a", metadata=_spec(key_name=True))
    right: str = field(default="d", metadata=_spec(key_name=True))
    pulse_period: float = field(default=0.1, metadata=_spec(minimum=0.02, maximum=1.0))
    """Seconds over which an analog value becomes a key held for that fraction of the time."""


@dataclass(frozen=True)
class ControllerConfig:
    """How predictions become controller input."""

    backend: str = field(
        default="game", metadata=_spec(choices=("game", "keyboard", "vjoy", "vgamepad", "null"))
    )
    deadzone_throttle: float = field(default=0.0, metadata=_spec(minimum=0.0, maximum=0.95))
    """Fraction of the throttle/brake range the game ignores; small outputs are lifted past it."""
    deadzone_steering: float = field(default=0.0, metadata=_spec(minimum=0.0, maximum=0.95))
    """Fraction of the stick range the game ignores (0 for the bundled game; XInput games
    such as GTA V keep the XInput default 7849/32767, about 0.24)."""
    smoothing: float = field(default=0.0, metadata=_spec(minimum=0.0, maximum=0.99))
    """Exponential smoothing factor; 0 sends each prediction as it is."""
    vjoy_device: int = field(default=1, metadata=_spec(minimum=1, maximum=16))
    keyboard: KeyboardConfig = field(default_factory=KeyboardConfig)


@dataclass(frozen=True)
class HotkeysConfig:
    """Global hotkeys (pynput names: a character or f1..f20, esc, pause, ...)."""

    pause: str = field(default="f8", metadata=_spec(key_name=True))
    quit: str = field(default="f10", metadata=_spec(key_name=True))


@dataclass(frozen=True)
class RecordConfig:
    """Driving video."""

    enabled: bool = field(default=False, metadata=_spec())
    folder: str = field(default="recordings", metadata=_spec())
    fps: int = field(default=30, metadata=_spec(minimum=1, maximum=120))
    hud: bool = field(default=True, metadata=_spec())
    """Draw the stream layout (predictions, controller values, FPS/PPS, model name)."""
    convcam: bool = field(default=True, metadata=_spec())
    """Include the Convcam (last conv layer's kernels as tiles)."""


@dataclass(frozen=True)
class Config:
    """The whole of config.toml."""

    game: GameConfig = field(default_factory=GameConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    hotkeys: HotkeysConfig = field(default_factory=HotkeysConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    source: str = field(default="<defaults>", metadata={"internal": True}, compare=False)
    """Where the values came from (for messages); not a TOML key."""


def load_config(
    path: Path | str = DEFAULT_CONFIG_PATH, overrides: Mapping[str, str] = {}
) -> Config:
    """Read, override and validate a config file.

    `overrides` maps dotted keys ("model.line") to TOML value text ("'x'", "3", or a bare word,
    which is taken as a string). Raises `ConfigError` with a one-line message on any problem.
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {source} (pass --config PATH, or copy config.toml "
            "from the Charles repository)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {source}: {error}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    for dotted, value_text in overrides.items():
        _apply_override(table, dotted, value_text, source)
    built = _build(Config, table, prefix="", source=source)
    return dataclasses.replace(built, source=source)


def parse_override(text: str) -> tuple[str, str]:
    """Split a `--set KEY=VALUE` argument."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set model.line=pilotnet_small")
    return key.strip(), value.strip()


def _apply_override(table: dict[str, Any], dotted: str, value_text: str, source: str) -> None:
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text  # a bare word such as pilotnet_small is meant as a string
    *parents, leaf = dotted.split(".")
    node = table
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot override {dotted}: {part} is not a table")
        node = child
    node[leaf] = value


def _toml_type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


def _build(cls: type, table: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in table:
        if key not in known:
            where = f"{prefix}{key}"
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            valid = ", ".join(known)
            raise ConfigError(f"{source}: unknown key '{where}'{hint}; valid keys here: {valid}")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name not in table:
            continue
        where = f"{prefix}{name}"
        value = table[name]
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: {where} must be a table [{where}] "
                    f"(got {_toml_type_name(value)} {value!r})"
                )
            values[name] = _build(kind, value, prefix=f"{where}.", source=source)
        else:
            values[name] = _check_value(value, kind, spec.metadata, where, source)
    return cls(**values)


def _check_value(value: Any, kind: Any, rules: Mapping[str, Any], where: str, source: str) -> Any:
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise ConfigError(
                f"{source}: {where} must be an array of {item_kind.__name__} "
                f"(got {_toml_type_name(value)} {value!r})"
            )
        lengths = rules.get("lengths")
        if lengths and len(value) not in lengths:
            expected = " or ".join(str(n) for n in lengths)
            raise ConfigError(
                f"{source}: {where} must have {expected} items (got {len(value)}: {value!r})"
            )
        return tuple(_check_scalar(v, item_kind, rules, f"{where}[{i}]", source)
                     for i, v in enumerate(value))  # fmt: skip
    return _check_scalar(value, kind, rules, where, source)


def _check_scalar(value: Any, kind: type, rules: Mapping[str, Any], where: str, source: str) -> Any:
    # bool is a subclass of int in Python, but `fps = true` is a mistake, not 1.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and is_number:
        value = float(value)
    elif (
        (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is bool and isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    ):
        pass
    else:
        expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
        raise ConfigError(
            f"{source}: {where} must be {expected[kind]} (got {_toml_type_name(value)} {value!r})"
        )
    low, high = rules.get("minimum"), rules.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{source}: {where} must be between {low} and {high} (got {value!r})")
    choices = rules.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        options = ", ".join(f"'{c}'" for c in choices)
        raise ConfigError(f"{source}: {where} must be one of {options}; got '{value}'{hint}")
    if rules.get("key_name") and not (len(value) == 1 or value.lower() in SPECIAL_KEYS):
        raise ConfigError(
            f"{source}: {where} must be a single character or a key name such as f8, esc, "
            f"space, up (got '{value}')"
        )
    return value
