"""A dagger collector beside a running trainer drives the newest published version."""

import dataclasses
from pathlib import Path

import numpy as np

from agent.checkpoints.publish import publish
from agent.checkpoints.resolve import latest
from agent.config import Config
from agent.inference.predictor import Predictor
from agent.learn.offscreen import follow_newest
from tests.helpers.models import constant_driver

LINE = "pilotnet_small"


def _config(store: Path, checkpoint: str = "latest") -> Config:
    config = Config()
    model = dataclasses.replace(config.model, line=LINE, store=str(store), checkpoint=checkpoint)
    return dataclasses.replace(config, model=model)


def _steering(agent: Predictor) -> float:
    return agent.predict(np.zeros(agent.line.input_shape, np.uint8)).steering


def test_the_agent_takes_a_newer_version_and_keeps_a_named_one(tmp_path: Path) -> None:
    store = tmp_path / "models"
    publish(constant_driver(0.3, -0.5, LINE), store, LINE, batches=10)
    first = latest(store, LINE)
    agent = Predictor.load(LINE, first)
    config = _config(store)
    follow_newest(agent, config)  # nothing newer: the same weights
    assert agent.checkpoint == first and abs(_steering(agent) + 0.5) < 1e-3

    publish(constant_driver(0.3, 0.25, LINE), store, LINE, batches=20)
    pinned = _config(store, checkpoint=str(first.folder))
    follow_newest(agent, pinned)  # a named checkpoint stays
    assert agent.checkpoint == first and abs(_steering(agent) + 0.5) < 1e-3

    follow_newest(agent, config)
    assert agent.checkpoint is not None and agent.checkpoint.manifest.batches == 20
    assert abs(_steering(agent) - 0.25) < 1e-3  # the prediction comes from the new weights
    assert "v0002" in agent.name
