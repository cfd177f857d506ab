"""The MAC budget inside real training on synthetic data: the controller reaches the budget and is
checkpointed with the training state (the same under pmap, shard_map and one device:
test_user_budget.py; every model takes the same traced path)."""

import jax
import numpy as np
import pytest

from soft_prune_jax.pipeline import model_path, run
from soft_prune_jax.scp import controller as C
from soft_prune_jax.training.loop import fit

from conftest import SyntheticData, tiny_config


def _budget_config(**overrides):
    """A tiny SCP run whose schedule lets the controller act: constant LR, 128 steps, one checkpoint."""
    config = tiny_config(
        model_kwargs={"widths": (16, "M", 32)},
        num_train_examples=512,
        num_epochs=4,
        lr_boundaries=(4,),
        checkpoint_every_epochs=4,
        sparsity_lambda=0.005,
        target_macs_ratio=0.5,
        finetune_epochs=0,
        log_every_steps=16,
    )
    config.budget_controller.ki = 0.1
    config.update(overrides)
    return config


@pytest.mark.slow
def test_controller_reaches_the_budget_on_synthetic_data(tmp_path):
    """Training steers lambda so that the network without its dying channels (q >= early_q) ends near
    the budget; landing then cuts the hard-masked network to at most the budget; train.json,
    prune.json and the progress metrics say so."""
    config = _budget_config()
    out = run(config, str(tmp_path), phases="train,prune", dataset=SyntheticData(num_train=512))
    metrics = out["train"]["train_metrics"]
    assert metrics["lambda"] > config.sparsity_lambda  # the controller had to push harder than it started
    assert abs(metrics["macs_signal_ratio"] - 0.5) < 0.1, metrics  # what the controller steers
    assert metrics["macs_hard_ratio"] >= metrics["macs_signal_ratio"] - 1e-6  # the hard mask is a little behind
    aim = 0.5 + config.budget_controller.aim_above * 0.5  # a little above the budget: landing trims the rest
    assert metrics["macs_target_ratio"] == pytest.approx(aim)
    landing = out["prune"]["budget"]
    assert landing["target_macs_ratio"] == 0.5
    assert 0.4 <= landing["reached_macs_ratio"] <= 0.5
    assert landing["hard_masked_macs_ratio"] == pytest.approx(metrics["macs_hard_ratio"], abs=0.05)
    if landing["hard_masked_macs_ratio"] <= 0.5:
        assert landing["removed_by_landing"] == 0
    else:
        assert landing["removed_by_landing"] > 0


def _budget_phase(config):
    return model_path.training_phase(config, (8, 8, 1))


@pytest.mark.slow
def test_killed_run_resumes_the_controller_exactly(tmp_path):
    """The controller state is part of the checkpoint: a killed run resumes to the same lambda and params."""
    config = tiny_config(
        num_epochs=2, num_train_examples=128, lr_boundaries=(2,), target_macs_ratio=0.6, cost_aware_penalty=True
    )
    expected = fit(config, str(tmp_path / "whole"), _budget_phase(config), dataset=SyntheticData())
    start = C.init_state(_budget_phase(config).budget.controller, config.sparsity_lambda)
    assert float(expected.state.controller.lam) != pytest.approx(float(start.lam))
    workdir = str(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        fit(config, workdir, _budget_phase(config), dataset=SyntheticData(kill_at=11))  # after step 8's save
    resumed = fit(config, workdir, _budget_phase(config), dataset=SyntheticData())
    for name in ("controller", "params"):
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, getattr(resumed.state, name), getattr(expected.state, name)
        )
