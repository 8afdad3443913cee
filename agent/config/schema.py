"""What config.toml holds: one frozen dataclass per table, the whole file as `Config`.

Each field's type, default and `metadata` (range, length, key name) are the rules the loader
(agent/config/loader.py) checks a file against; a field that takes one of a few words has a
`Literal` type, and the loader reads the allowed words from it. Keys a config file leaves out
take these defaults, which tests hold to exactly the values of the commented default config
(agent/config/default_config.toml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent.nets.registry import LineName

TITLE_MAX_LENGTH = 200
PATH_MAX_LENGTH = 4096
# Screen coordinates of game.region; virtual desktops span at most this far either way.
SCREEN_LIMIT = 32768
# capture.size's minimum side; a crop must leave at least this much of the picture.
MIN_PICTURE = 16

# Key names pynput knows besides single characters (pynput.keyboard.Key members we allow).
SPECIAL_KEYS = frozenset(
    [f"f{n}" for n in range(1, 21)]
    + [
        "esc", "space", "enter", "tab", "backspace", "delete", "insert", "home", "end",
        "page_up", "page_down", "up", "down", "left", "right", "pause", "scroll_lock",
        "print_screen", "shift", "ctrl", "alt",
    ]
)  # fmt: skip

# The words a key takes, in the order error messages list them.
TitleMatch = Literal["exact", "substring"]
InferenceBackend = Literal["tensorflow", "onnxruntime"]
OnnxProvider = Literal["auto", "cpu", "cuda", "directml", "tensorrt"]
ControllerBackend = Literal["game", "keyboard", "vjoy", "vgamepad", "null"]
SwapPolicy = Literal["immediate", "on_unstuck", "manual", "off"]
RecordMode = Literal["hud", "layout"]
VideoEncoder = Literal["auto", "libx264", "h264_nvenc"]
CollectSource = Literal["autopilot", "dagger", "human"]
CollectRender = Literal["window", "offscreen"]
TrainStrategy = Literal["default", "mirrored", "multiworker"]
TrainStart = Literal["pretrained", "reference"]


def _spec(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    lengths: tuple[int, ...] | None = None,
    key_name: bool = False,
    max_length: int = PATH_MAX_LENGTH,
    may_be_empty: bool = False,
) -> dict[str, Any]:
    """Validation rules for one field, stored in its dataclass metadata.

    Numbers must lie in [minimum, maximum]; arrays have one of `lengths` items; strings must be
    non-blank plain text of at most `max_length` characters (or exactly "" where
    `may_be_empty`), a key name where `key_name` (a character or one of SPECIAL_KEYS).
    """
    return {
        "minimum": minimum,
        "maximum": maximum,
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
    match: TitleMatch = field(default="exact", metadata=_spec())
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

    line: LineName = field(default="pilotnet_small", metadata=_spec())
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

    backend: InferenceBackend = field(default="tensorflow", metadata=_spec())
    """"tensorflow": a compiled tf.function; "onnxruntime": the checkpoint exported to ONNX
    (cached next to it, checked against TensorFlow before use) and run by ONNX Runtime."""
    provider: OnnxProvider = field(default="auto", metadata=_spec())
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

    backend: ControllerBackend = field(default="game", metadata=_spec())
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

    policy: SwapPolicy = field(default="immediate", metadata=_spec())
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
    mode: RecordMode = field(default="hud", metadata=_spec())
    """"hud": the game picture with the HUD; "layout": the stream layout (game, model input,
    Convcam, console, loss curve) in one 1280x720 picture."""
    hud: bool = field(default=True, metadata=_spec())
    """Draw the HUD (predictions, controller values, FPS/PPS, model name and batch)."""
    convcam: bool = field(default=True, metadata=_spec())
    """Show the Convcam (last conv layer's kernels as tiles, from the driving prediction)."""
    encoder: VideoEncoder = field(default="auto", metadata=_spec())
    """H.264 encoder; "auto" uses NVENC (NVIDIA GPU) when it opens, libx264 otherwise."""
    nice: int = field(default=19, metadata=_spec(minimum=0, maximum=19))
    """Niceness (Linux) of the threads that draw and encode, so they yield to the drive loop."""
    segment_minutes: float = field(default=0.0, metadata=_spec(minimum=0.0, maximum=1440.0))
    """Start a new file every this many minutes, at a keyframe, losing no picture (0: one file
    per recording)."""
    keep_gb: float = field(default=0.0, metadata=_spec(minimum=0.0, maximum=1_000_000.0))
    """Delete the oldest recordings Charles wrote in `folder` to keep them within this many
    gigabytes (0: keep everything); never any other file."""


@dataclass(frozen=True)
class LiveConfig:
    """The live view for OBS: an overlay page, MJPEG pictures and the status, served while
    driving (`charles drive --live [HOST:PORT]`)."""

    enabled: bool = field(default=False, metadata=_spec())
    """Serve during every `charles drive`."""
    address: str = field(default="127.0.0.1:47900", metadata=_spec(max_length=300))
    """HOST:PORT to listen on; an address other than loopback needs `token`."""
    token: str = field(default="", repr=False, metadata=_spec(max_length=200, may_be_empty=True))
    """Secret every request must carry (?token=... or "Authorization: Bearer ..."); required
    to listen on any address but loopback."""
    max_viewers: int = field(default=8, metadata=_spec(minimum=1, maximum=64))
    """Connections that stream (pictures or overlay updates) at once; more are refused."""
    jpeg_quality: int = field(default=80, metadata=_spec(minimum=10, maximum=100))
    model_bound_fps: int = field(default=10, metadata=_spec(minimum=0, maximum=240))
    """Pictures a second drawn for the live view while the model predicts fewer times a
    second than 80% of capture.fps (it, not the game, sets the pace); 0: record.fps always. A
    recording or a stream (a video: every slot) is not affected."""


@dataclass(frozen=True)
class StreamConfig:
    """Straight to a streaming service: the layout as H.264 with silent AAC over RTMP(S)."""

    url: str = field(default="", repr=False, metadata=_spec(max_length=2000, may_be_empty=True))
    """rtmp:// or rtmps:// ingest URL ("": no stream); the stream key may come from the
    environment variable CHARLES_STREAM_KEY instead, and is never logged."""
    bitrate_kbps: int = field(default=4500, metadata=_spec(minimum=100, maximum=50_000))
    keyframe_seconds: float = field(default=2.0, metadata=_spec(minimum=0.5, maximum=10.0))
    """Seconds between keyframes; ingests ask for 2."""


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

    source: CollectSource = field(default="autopilot", metadata=_spec())
    """"autopilot": the bundled game drives itself; "dagger": the agent drives and the
    autopilot labels; "human": a person drives with the keyboard."""
    render: CollectRender = field(default="window", metadata=_spec())
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
    strategy: TrainStrategy = field(default="default", metadata=_spec())
    """tf.distribute strategy: "default" (one device), "mirrored" (all GPUs of this machine),
    "multiworker" (several machines; TF_CONFIG names them)."""
    cluster_timeout_seconds: float = field(
        default=120.0, metadata=_spec(minimum=1.0, maximum=86400.0)
    )
    """multiworker: how long a step shared by the cluster waits for the other members before
    this one ends with one line (a member died or hangs)."""
    seed: int = field(default=0, metadata=_spec(minimum=0, maximum=2**31 - 1))
    """Seed of the buffers' random draws and of fresh weights."""
    start_from: TrainStart = field(default="pretrained", metadata=_spec())
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
    live: LiveConfig = field(default_factory=LiveConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    data: DataConfig = field(default_factory=DataConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = field(default="<defaults>", metadata={"internal": True}, compare=False)
    """Where the values came from (for messages); not a TOML key."""
