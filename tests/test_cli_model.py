"""`charles model ...` as a user runs it."""

from __future__ import annotations

import json

from tests.helpers.charles import REPO, assert_one_line_error


def test_summary_prints_the_seed_numbers_for_model_0005(run_charles) -> None:
    result = run_charles("model", "summary", "--model", "model_0005_inceptionresnetv2")
    assert result.returncode == 0, result.stderr
    assert "Total params: 56,470,434" in result.stdout
    assert "Trainable params: 56,409,890" in result.stdout
    assert "Non-trainable params: 60,544" in result.stdout


def test_summary_loads_the_checkpoint_it_is_given(tmp_path, run_charles) -> None:
    from agent.checkpoints.publish import publish
    from agent.nets.registry import get_line

    store = tmp_path / "models"
    publish(get_line("pilotnet_small").build("none"), store, "pilotnet_small", batches=7)
    common = ("--model", "pilotnet_small", "--set", f"model.store={json.dumps(str(store))}")
    result = run_charles("model", "summary", *common, "--checkpoint", "v0001", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["checkpoint"] == "pilotnet_small/v0001 (7 batches)"
    # A checkpoint that is not there is an error, not a summary of fresh weights.
    result = run_charles("model", "summary", *common, "--checkpoint", "v0002")
    assert_one_line_error(result, "no version v0002", "have: v0001")
    # Without --checkpoint nothing is loaded (the config's "latest" is for driving).
    result = run_charles("model", "summary", *common, "--json")
    assert json.loads(result.stdout)["checkpoint"] is None


def test_list_names_the_shipped_reference_while_the_store_is_empty(tmp_path, capsys) -> None:
    from agent.checkpoints.reference import reference_checkpoint
    from agent.cli import main

    store = json.dumps(str(tmp_path / "models"))
    assert main(["model", "list", "--config", str(REPO / "config.toml"),
                 "--set", f"model.store={store}"]) == 0  # fmt: skip
    listed = capsys.readouterr().out
    shipped = reference_checkpoint("pilotnet_small")
    assert shipped is not None
    assert (
        f"pilotnet_small  input 160x90  [no checkpoints yet; shipped reference {shipped.name}]"
        in listed
    )
    assert "model_0005_inceptionresnetv2  input 480x270  [no checkpoints yet]" in listed
