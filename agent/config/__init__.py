"""The configuration: config.toml as frozen, validated dataclasses.

schema.py says what the file holds (tables, keys, defaults, allowed values); loader.py reads a
file, applies command-line overrides and checks every value against the schema;
default_config.toml is the commented default config, every key with its default. The names
below are the package's interface: import them from `agent.config`.
"""

from agent.config.loader import (
    BUILT_IN_SOURCE,
    DEFAULT_CONFIG_PATH,
    default_config_text,
    load_config,
    parse_override,
)
from agent.config.schema import (
    CaptureConfig,
    CollectConfig,
    CollectRender,
    CollectSource,
    Config,
    ControllerBackend,
    ControllerConfig,
    DataConfig,
    GameConfig,
    HotkeysConfig,
    InferenceBackend,
    InferenceConfig,
    KeyboardConfig,
    ModelConfig,
    OnnxProvider,
    RecordConfig,
    RecordMode,
    SwapConfig,
    SwapPolicy,
    TitleMatch,
    TrainConfig,
    TrainStart,
    TrainStrategy,
    UnstuckConfig,
    VideoEncoder,
)

__all__ = [
    "BUILT_IN_SOURCE",
    "DEFAULT_CONFIG_PATH",
    "CaptureConfig",
    "CollectConfig",
    "CollectRender",
    "CollectSource",
    "Config",
    "ControllerBackend",
    "ControllerConfig",
    "DataConfig",
    "GameConfig",
    "HotkeysConfig",
    "InferenceBackend",
    "InferenceConfig",
    "KeyboardConfig",
    "ModelConfig",
    "OnnxProvider",
    "RecordConfig",
    "RecordMode",
    "SwapConfig",
    "SwapPolicy",
    "TitleMatch",
    "TrainConfig",
    "TrainStart",
    "TrainStrategy",
    "UnstuckConfig",
    "VideoEncoder",
    "default_config_text",
    "load_config",
    "parse_override",
]
