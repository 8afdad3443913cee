"""The reference checkpoint that ships with Charles, and when `charles drive` uses it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from agent.checkpoints.load import load_into, sha256_of
from agent.checkpoints.manifest import WEIGHTS_FILE
from agent.checkpoints.publish import publish
from agent.checkpoints.reference import REFERENCE_ROOT, checkpoint_to_drive, reference_checkpoint
from agent.config import Config, ModelConfig
from agent.nets.registry import get_line


def test_the_reference_checkpoint_loads_and_its_manifest_matches_the_file() -> None:
    checkpoint = reference_checkpoint("pilotnet_small")
    assert checkpoint is not None, f"no reference checkpoint in {REFERENCE_ROOT}"
    manifest = checkpoint.manifest
    weights = checkpoint.folder / WEIGHTS_FILE
    assert manifest.model_line == "pilotnet_small"
    assert manifest.weights_sha256 == sha256_of(weights)
    assert manifest.weights_bytes == weights.stat().st_size
    assert manifest.batches > 0
    # Its recipe: the commands that made it, with their seeds and minutes.
    for part in ("charles collect", "charles train", "seed", "minutes"):
        assert part in manifest.note, manifest.note
    model = get_line("pilotnet_small").build("none")
    load_into(model, checkpoint, "pilotnet_small")  # strict: every weight, finite, hash
    frames = np.random.default_rng(0).integers(0, 256, (4, 90, 160, 3), dtype=np.uint8)
    throttle, steering = (np.asarray(o) for o in model(frames, training=False))
    assert np.isfinite(throttle).all() and np.isfinite(steering).all()


def test_there_is_no_reference_for_a_line_without_one() -> None:
    assert reference_checkpoint("model_0005_inceptionresnetv2") is None


def test_drive_uses_the_reference_only_while_the_store_is_empty(tmp_path: Path) -> None:
    config = Config(model=ModelConfig(store=str(tmp_path / "models")))
    chosen = checkpoint_to_drive(config)
    assert chosen is not None and chosen.folder == REFERENCE_ROOT / "pilotnet_small"
    # "none" means fresh weights, never the reference.
    fresh = dataclasses.replace(config, model=dataclasses.replace(config.model, checkpoint="none"))
    assert checkpoint_to_drive(fresh) is None
    # Anything a trainer published is newer and wins.
    published = publish(get_line("pilotnet_small").build("none"), tmp_path / "models",
                        "pilotnet_small", 5)  # fmt: skip
    chosen = checkpoint_to_drive(config)
    assert chosen is not None and chosen.folder == published.folder
