"""A benchmark's work folder and the `charles` commands it runs there.

Benchmarks that drive in child processes (swap, record, learn, several settings of drive) run
them in a fresh folder, so relative paths of the config (the model store, the data folder)
start empty there. Each child reads the config the benchmark was given: the text of its file,
or the built-in defaults (an installed Charles has no repository to copy one from), written
into the work folder, plus the benchmark's `--set` overrides on its command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import BUILT_IN_SOURCE, Config, default_config_text


def write_config(work: Path, config: Config) -> Path:
    """`work`/config.toml: the text of the file `config` was read from, else the built-in
    defaults (`Config()` made in code has no file either). Returns its path."""
    if config.source in (BUILT_IN_SOURCE, Config().source):
        text = default_config_text()
    else:
        text = Path(config.source).read_text(encoding="utf-8")
    path = work / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def charles_command(*args: str) -> list[str]:
    """The argument list that runs `charles ARGS` with this very Python and package."""
    return [sys.executable, "-m", "agent", *args]


def set_flags(overrides: Sequence[str] | None) -> list[str]:
    """`--set KEY=VALUE` for each override, as a child command takes them."""
    return [flag for item in overrides or () for flag in ("--set", item)]
