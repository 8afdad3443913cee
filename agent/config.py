"""config.toml -> frozen, validated dataclasses.

Without a config.toml in the current folder (and no --config), the commented default config
that ships inside the package (agent/default_config.toml) is loaded instead: it is also what
`charles config init` writes and what the repository's config.toml is a copy of, so the
defaults a new user runs with, the file they edit and the file the README describes are one
text. Keys a config file leaves out take the dataclass defaults below, which tests hold to
exactly that file's values.

The dataclasses below are the schema: each field's type and `metadata` (range, choices, length)
are what the loader checks. A mistake becomes one `ConfigError` line that names the file, the
key, what was expected and what was found, e.g.

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
import os
import re
import stat
import sys
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.nets.registry import LINE_NAMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("config.toml")
"""Where a config is read from when no --config is given (the current folder)."""
DEFAULT_CONFIG_RESOURCE = "default_config.toml"
"""The commented default config, a file of the `agent` package."""
BUILT_IN_SOURCE = "built-in defaults"
"""`Config.source` (and the name in messages) when no config file was read."""

log = logging.getLogger(__name__)

# Key names pynput knows besides single characters (pynput.keyboard.Key members we allow).
SPECIAL_KEYS = frozenset(
    [f"f{n}" for n in range(1, 21)]
    + [
        "esc", "space", "enter", "tab", "backspace", "delete", "insert", "home", "end",
        "page_up", "page_down", "up", "down", "left", "right", "pause", "scroll_lock",
        "print_screen", "shift", "ctrl", "alt",
    ]
)  # fmt: skip

# A config file is a page of text; anything bigger is a wrong --config (or /dev/zero).
MAX_CONFIG_BYTES = 1024 * 1024  # 1 MiB, as the message says
TITLE_MAX_LENGTH = 200
PATH_MAX_LENGTH = 4096
# Longest quoted value in an error message, so no error line is ever huge.
SHOWN_MAX_LENGTH = 60
# Screen coordinates of game.region; virtual desktops span at most this far either way.
SCREEN_LIMIT = 32768
# capture.size's minimum side; a crop must leave at least this much of the picture.
MIN_PICTURE = 16


def _spec(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    lengths: tuple[int, ...] | None = None,
    key_name: bool = False,
    max_length: int = PATH_MAX_LENGTH,
    may_be_empty: bool = False,
) -> dict[str, Any]:
    """Validation rules for one field, stored in its dataclass metadata.

    Numbers must lie in [minimum, maximum]; strings must be non-blank plain text of at most
    `max_length` characters (or exactly "" where `may_be_empty`).
    """
    return {
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "lengths": lengths,
        "key_name": key_name,
        "max_length": max_length,
        "may_be_empty": may_be_empty,
    }


@dataclass(frozen=True)
class GameConfig:
    """Which window is the game."""

    title: str = field(default="Charles CarRacing", metadata=_spec(max_length=TITLE_MAX_LENGTH))
    """Window title to look for (never blank: a blank substring matches every window)."""
    match: str = field(default="exact", metadata=_spec(choices=("exact", "substring")))
    """How `title` is compared with window titles; "substring" needs `process` too."""
    process: str = field(default="", metadata=_spec(max_length=TITLE_MAX_LENGTH, may_be_empty=True))
    """File name of the game's executable ("GTA5.exe"); "" for any program. When set, only
    windows of a process running that file count."""
    region: tuple[int, ...] = field(
        default=(), metadata=_spec(lengths=(0, 4), minimum=-SCREEN_LIMIT, maximum=SCREEN_LIMIT)
    )
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
        default=(1280, 720), metadata=_spec(lengths=(2,), minimum=MIN_PICTURE, maximum=7680)
    )
    """Size [width, height] the game renders at; frames of another size are scaled to it first."""
    crop: tuple[int, ...] = field(
        default=(0, 0, 0, 0), metadata=_spec(lengths=(4,), minimum=0, maximum=7680)
    )
    """Pixels removed [top, right, bottom, left] from a frame of `size` before resizing."""
    follow_model: bool = field(default=True, metadata=_spec())
    """When a prediction takes longer than a capture period (a model slower than `fps`), grab
    the next frame the moment it ends instead of at the next tick, so the model never starts on
    a picture up to a period old."""


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
class InferenceConfig:
    """How the driving model executes: the interpreter, not what the network means."""

    backend: str = field(
        default="tensorflow", metadata=_spec(choices=("tensorflow", "onnxruntime"))
    )
    """"tensorflow": a compiled tf.function; "onnxruntime": the checkpoint exported to ONNX
    (cached next to it, checked against TensorFlow before use) and run by ONNX Runtime."""
    provider: str = field(
        default="auto", metadata=_spec(choices=("auto", "cpu", "cuda", "directml", "tensorrt"))
    )
    """ONNX Runtime execution provider: "auto" takes the first installed of TensorRT, CUDA
    (onnxruntime-gpu), DirectML (onnxruntime-directml, any Windows GPU) and CPU."""
    intra_op_threads: int = field(default=0, metadata=_spec(minimum=0, maximum=1024))
    """Threads one operation may use (TensorFlow and ONNX Runtime); 0: the library's default
    (one per core)."""
    inter_op_threads: int = field(default=0, metadata=_spec(minimum=0, maximum=1024))
    """Operations run side by side; 0: the library's default."""
    spin: bool = field(default=False, metadata=_spec())
    """ONNX Runtime: let idle worker threads spin for the next run instead of sleeping (a
    little lower latency on an idle machine, CPU taken from capture and the game on a small one)."""
    xla: bool = field(default=False, metadata=_spec())
    """TensorFlow: compile the prediction with XLA (jit_compile)."""
    mixed_precision: bool = field(default=False, metadata=_spec())
    """TensorFlow: compute in float16 with float32 weights ("mixed_float16"); for GPUs with
    tensor cores, slower on a CPU."""


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
    hold: float = field(default=1.0, metadata=_spec(minimum=0.1, maximum=10.0))
    """Dead-man, in seconds: a command older than this goes neutral by itself (keys released,
    pedals up, stick centred) even if the agent hangs; above the model's time per prediction."""
    vjoy_device: int = field(default=1, metadata=_spec(minimum=1, maximum=16))
    keyboard: KeyboardConfig = field(default_factory=KeyboardConfig)


@dataclass(frozen=True)
class HotkeysConfig:
    """Global hotkeys (pynput names: a character or f1..f20, esc, pause, ...)."""

    pause: str = field(default="f8", metadata=_spec(key_name=True))
    quit: str = field(default="f10", metadata=_spec(key_name=True))
    swap: str = field(default="f9", metadata=_spec(key_name=True))
    """swap.policy = "manual": swap in the newest checkpoint that passed its checks."""
    record: str = field(default="f7", metadata=_spec(key_name=True))
    """Start or stop recording video."""


@dataclass(frozen=True)
class SwapConfig:
    """Following the model store while driving: newer checkpoints replace the driving one."""

    policy: str = field(
        default="immediate",
        metadata=_spec(choices=("immediate", "on_unstuck", "manual", "off")),
    )
    """When a newer checkpoint that passed every check takes over: "immediate" (between the
    next two predictions), "on_unstuck" (at the next unstuck, or after unstuck_timeout),
    "manual" (the swap hotkey) or "off" (never; drive the checkpoint loaded at start)."""
    unstuck_timeout: float = field(default=60.0, metadata=_spec(minimum=0.0, maximum=86400.0))
    """on_unstuck: seconds a ready checkpoint waits for an unstuck before it is applied anyway."""
    poll_seconds: float = field(default=1.0, metadata=_spec(minimum=0.05, maximum=3600.0))
    """How often the store is looked at (a directory stat; manifests only of new versions)."""
    nice: int = field(default=10, metadata=_spec(minimum=0, maximum=19))
    """Niceness of the loading thread (Linux), so a load yields the CPU to the drive loop."""
    load_share: float = field(default=0.5, metadata=_spec(minimum=0.01, maximum=1.0))
    """Share of one core's time the loading thread may use (it works a few ms, then pauses);
    1 = no limit. Lower spreads a load thinner, so predictions beside it slow down less."""


@dataclass(frozen=True)
class UnstuckConfig:
    """Noticing a stuck car from the pixels and getting it going again."""

    enabled: bool = field(default=True, metadata=_spec())
    window: float = field(default=4.0, metadata=_spec(minimum=0.5, maximum=600.0))
    """Seconds of driving with too little change in the picture before the car counts as stuck."""
    min_change: float = field(default=3.0, metadata=_spec(minimum=0.0, maximum=255.0))
    """Mean change of a grey thumbnail (0..255 per pixel) below which the picture stands still."""
    release: float = field(default=0.3, metadata=_spec(minimum=0.0, maximum=10.0))
    """Seconds all controls are released before backing up."""
    reverse: float = field(default=1.5, metadata=_spec(minimum=0.0, maximum=30.0))
    """Seconds of backing up (brake held, steering opposite to the last command)."""
    reverse_brake: float = field(default=1.0, metadata=_spec(minimum=0.0, maximum=1.0))
    """Brake held while backing up (GTA V and the bundled game reverse on the brake)."""
    reset_game: bool = field(default=True, metadata=_spec())
    """Bundled game only: ask the game to put the car back on the track instead of backing up."""


@dataclass(frozen=True)
class RecordConfig:
    """Driving video: what the agent saw and did, as an H.264 MP4, recorded while it drives."""

    enabled: bool = field(default=False, metadata=_spec())
    """Record from the start of every `charles drive` (the record hotkey toggles it anyway)."""
    folder: str = field(default="recordings", metadata=_spec())
    fps: int = field(default=30, metadata=_spec(minimum=1, maximum=120))
    """Frames per second of the video, on the wall clock."""
    mode: str = field(default="hud", metadata=_spec(choices=("hud", "layout")))
    """"hud": the game picture with the HUD; "layout": the stream layout (game, model input,
    Convcam, console, loss curve) in one 1280x720 picture."""
    hud: bool = field(default=True, metadata=_spec())
    """Draw the HUD (predictions, controller values, FPS/PPS, model name and batch)."""
    convcam: bool = field(default=True, metadata=_spec())
    """Show the Convcam (last conv layer's kernels as tiles, from the driving prediction)."""
    encoder: str = field(default="auto", metadata=_spec(choices=("auto", "libx264", "h264_nvenc")))
    """H.264 encoder; "auto" uses NVENC (NVIDIA GPU) when it opens, libx264 otherwise."""
    nice: int = field(default=19, metadata=_spec(minimum=0, maximum=19))
    """Niceness (Linux) of the threads that draw and encode, so they yield to the drive loop."""


@dataclass(frozen=True)
class DataConfig:
    """Where collectors publish sample shards and the trainer reads them."""

    folder: str = field(default="data", metadata=_spec())
    """Data folder; several collectors (processes or machines) may share it."""
    samples_per_shard: int = field(default=500, metadata=_spec(minimum=1, maximum=100_000))
    """Samples per shard file; a shard becomes visible to the trainer only when complete."""


@dataclass(frozen=True)
class CollectConfig:
    """`charles collect`: where labelled samples come from and which ones are kept."""

    source: str = field(
        default="autopilot", metadata=_spec(choices=("autopilot", "dagger", "human"))
    )
    """"autopilot": the bundled game drives itself; "dagger": the agent drives and the
    autopilot labels; "human": a person drives with the keyboard."""
    render: str = field(default="window", metadata=_spec(choices=("window", "offscreen")))
    """"window": capture the game's window; "offscreen": the bundled game rendered in-process,
    unpaced (same pixels as the window, several times faster; autopilot and dagger only)."""
    autopilot_share: float = field(default=0.5, metadata=_spec(minimum=0.0, maximum=1.0))
    """dagger: fraction of the driving time the autopilot has the wheel (in stretches of a
    few seconds); the rest the agent drives with its current checkpoint."""
    steering_noise: float = field(default=0.0, metadata=_spec(minimum=0.0, maximum=1.0))
    """autopilot/dagger: size of random steering disturbances applied to the car (labels stay
    the autopilot's clean commands), so the data shows how to recover from drifting off."""
    balance_ratio: float = field(default=2.0, metadata=_spec(minimum=1.0, maximum=1000.0))
    """Balancing v3: a bin keeps a sample while it holds fewer than ratio x the mean bin."""
    seed: int = field(default=0, metadata=_spec(minimum=0, maximum=2**31 - 1))
    """Track seed of the first track; later tracks follow from it."""
    histogram: bool = field(default=True, metadata=_spec())
    """Write <data>/histogram-<writer>.png: samples seen and kept per bin, per output."""


@dataclass(frozen=True)
class TrainConfig:
    """`charles train`: buffers, schedule, publishing and how much of the machine it takes."""

    buffer_size: int = field(default=25_000, metadata=_spec(minimum=10, maximum=10_000_000))
    """Samples per output buffer (one buffer per output)."""
    start_fill: float = field(default=0.9, metadata=_spec(minimum=0.01, maximum=1.0))
    """Batches are drawn only while every buffer is at least this full."""
    max_uses: int = field(default=1, metadata=_spec(minimum=1, maximum=1000))
    """Times a sample may be drawn before it leaves its buffer (1: the seed's rule)."""
    batch_per_buffer: int = field(default=32, metadata=_spec(minimum=1, maximum=4096))
    """Samples drawn from each buffer per batch (a batch holds this times the outputs)."""
    learning_rate: float = field(default=1e-3, metadata=_spec(minimum=1e-7, maximum=1.0))
    clip_norm: float = field(default=1.0, metadata=_spec(minimum=0.0, maximum=1e6))
    """Largest global gradient norm a batch may apply (0: no clipping); one odd batch (a
    recovery manoeuvre, a mislabelled shard) then cannot throw the network into saturation."""
    warmup_batches: int = field(default=1000, metadata=_spec(minimum=0, maximum=10_000_000))
    """Batches over which the learning rate rises linearly from 0 to learning_rate."""
    publish_batches: int = field(default=1000, metadata=_spec(minimum=1, maximum=10_000_000))
    """Publish a checkpoint every this many batches ..."""
    publish_seconds: float = field(default=300.0, metadata=_spec(minimum=1.0, maximum=86400.0))
    """... or after this many seconds with new batches, whichever comes first."""
    keep_versions: int = field(default=10, metadata=_spec(minimum=2, maximum=100_000))
    """Published versions kept per line; older ones are pruned (never the newest two)."""
    state: str = field(default="training", metadata=_spec())
    """Trainer state folder: buffer copies, optimizer state, TensorBoard logs."""
    save_buffers_seconds: float = field(default=300.0, metadata=_spec(minimum=1.0, maximum=86400.0))
    """How often the rotating on-disk copy of the buffers is written."""
    threads: int = field(default=0, metadata=_spec(minimum=0, maximum=1024))
    """CPU threads TensorFlow may use for training (0: all cores)."""
    nice: int = field(default=10, metadata=_spec(minimum=0, maximum=19))
    """Scheduling niceness added to the trainer (0..19; higher yields more to charles drive)."""
    strategy: str = field(
        default="default", metadata=_spec(choices=("default", "mirrored", "multiworker"))
    )
    """tf.distribute strategy: "default" (one device), "mirrored" (all GPUs of this machine),
    "multiworker" (several machines; TF_CONFIG names them)."""
    seed: int = field(default=0, metadata=_spec(minimum=0, maximum=2**31 - 1))
    """Seed of the buffers' random draws and of fresh weights."""
    start_from: str = field(
        default="pretrained", metadata=_spec(choices=("pretrained", "reference"))
    )
    """With no checkpoint of the line in the store yet: start from model.pretrained, or from
    the reference checkpoint Charles ships for the line (fine-tuning it)."""


@dataclass(frozen=True)
class Config:
    """The whole of config.toml."""

    game: GameConfig = field(default_factory=GameConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    hotkeys: HotkeysConfig = field(default_factory=HotkeysConfig)
    swap: SwapConfig = field(default_factory=SwapConfig)
    unstuck: UnstuckConfig = field(default_factory=UnstuckConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    data: DataConfig = field(default_factory=DataConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = field(default="<defaults>", metadata={"internal": True}, compare=False)
    """Where the values came from (for messages); not a TOML key."""


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
        table = _parse_file(Path(source), _clip(source, 200))
    shown = _clip(source, 200)
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
    return resources.files("agent").joinpath(DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")


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
            f"--set {_clip(text)}: expected KEY=VALUE, e.g. --set model.line=pilotnet_small"
        )
    return key.strip(), value.strip()


def _parse_file(path: Path, shown: str) -> dict[str, Any]:
    data = _read_small_file(path, shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read config file {shown}: {error}") from None
    try:
        return _loads(text)
    except _BadToml as error:
        raise ConfigError(f"{shown}: not valid TOML: {error}") from None


def _read_small_file(path: Path, shown: str) -> bytes:
    """The bytes of `path`, which must be a regular file of at most MAX_CONFIG_BYTES."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {shown} (check the --config path, or write the "
            f"commented default config there with: charles config init {shown})"
        ) from None
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        raise ConfigError(f"cannot read config file {shown}: {_why(error)}") from None
    # Reading a device or a pipe would never end (/dev/zero) or block (a FIFO).
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"config file {shown} is not a regular file (a folder, device or pipe); "
            "pass --config with the path of a config.toml file"
        )
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(_too_large(shown, info.st_size))
    try:
        # O_NONBLOCK: should the path become a FIFO after the check, opening it must not hang.
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ConfigError(f"config file {shown} is not a regular file")
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read config file {shown}: {_why(error)}") from None
    if len(data) > MAX_CONFIG_BYTES:  # it grew after the check
        raise ConfigError(_too_large(shown, len(data)))
    return data


def _why(error: Exception) -> str:
    # strerror leaves out the path, which the message already names (and may be long).
    return _clip((error.strerror if isinstance(error, OSError) else None) or str(error), 120)


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
                (dotted,), f"cannot override {_clip(dotted)}: {_clip(part)} is not a table"
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
                (dotted,), f"cannot read the value {_show(value_text)}: {reason}; {fix}"
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
                return _clip(origins.get(dotted) or f"--set {dotted}", 120)
    return None


def _clip(text: str, limit: int = SHOWN_MAX_LENGTH) -> str:
    """`text` for an error line: control characters escaped, at most about `limit` long."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(text)} characters)"


def _show(value: object) -> str:
    """A value quoted in an error message, e.g. 'fast' or [1, 2], shortened when long."""
    try:
        text = repr(value)
    except ValueError:  # an int past the digit limit: say how big instead
        return "a number with too many digits"
    if len(text) <= SHOWN_MAX_LENGTH:
        return text
    if isinstance(value, (list, dict)):
        size = f"{len(value)} items"
    elif isinstance(value, int):
        size = f"{len(text.lstrip('-'))} digits"
    else:
        size = f"{len(value) if isinstance(value, str) else len(text)} characters"
    return f"{text[: SHOWN_MAX_LENGTH - 3]}... ({size})"


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
            raise _Invalid((where,), f"unknown key {_show(where)}{hint}; valid keys here: {valid}")
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
                    f"(got {_toml_type_name(value)} {_show(value)})",
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
                f"(got {_toml_type_name(value)} {_show(value)})",
            )
        lengths = rules.get("lengths")
        if lengths and len(value) not in lengths:
            expected = " or ".join(str(n) for n in lengths)
            raise _Invalid(
                (where,), f"{where} must have {expected} items (got {len(value)}: {_show(value)})"
            )
        return tuple(_check_scalar(v, item_kind, rules, f"{where}[{i}]")
                     for i, v in enumerate(value))  # fmt: skip
    return _check_scalar(value, kind, rules, where)


def _check_scalar(value: Any, kind: type, rules: Mapping[str, Any], where: str) -> Any:
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
            f"{where} must be {expected[kind]} (got {_toml_type_name(value)} {_show(value)})",
        )
    if is_number:
        return _check_number(value, kind, rules, where)
    if kind is str:
        return _check_text(value, rules, where)
    return value


def _check_number(value: float, kind: type, rules: Mapping[str, Any], where: str) -> float:
    # TOML has nan and inf; both slip through every range comparison below.
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid((where,), f"{where} must be a finite number (got {value!r})")
    low, high = rules.get("minimum"), rules.get("maximum")
    # Compared before any float(): a 400-digit integer is out of range, not an OverflowError.
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Invalid((where,), f"{where} must be between {low} and {high} (got {_show(value)})")
    return float(value) if kind is float else value


def _check_text(value: str, rules: Mapping[str, Any], where: str) -> str:
    limit = rules.get("max_length") or PATH_MAX_LENGTH
    if len(value) > limit:
        raise _Invalid((where,), f"{where} must be at most {limit} characters (got {_show(value)})")
    # Control characters break one-line messages and paths (NUL); lone surrogates (from
    # undecodable command-line bytes) cannot even be printed.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise _Invalid(
            (where,),
            f"{where} must be plain text without control characters such as newlines or tabs "
            f"(got {_show(value)})",
        )
    if rules.get("key_name"):
        if not ((len(value) == 1 and not value.isspace()) or value.lower() in SPECIAL_KEYS):
            hint = "; write space for the space bar" if value.isspace() else ""
            raise _Invalid(
                (where,),
                f"{where} must be a single character or a key name such as f8, esc, space, up "
                f"(got {_show(value)}{hint})",
            )
        return value
    if value == "" and rules.get("may_be_empty"):
        return value
    if not value.strip():
        raise _Invalid((where,), f"{where} must not be empty or blank (got {_show(value)})")
    choices = rules.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        options = ", ".join(f"'{c}'" for c in choices)
        raise _Invalid((where,), f"{where} must be one of {options}; got {_show(value)}{hint}")
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
        both = f"{first} {_show(names[first])} and {where} {_show(name)}"
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
