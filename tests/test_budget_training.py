"""The MAC budget inside real training on synthetic data: the controller reaches the budget, is
checkpointed with the training state, and is the same under pmap, shard_map and one device."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from soft_prune_jax.method import controller as C
from soft_prune_jax.pipeline import run
from soft_prune_jax.pipeline.budget import training_budget
from soft_prune_jax.training.experiment import training_phase
from soft_prune_jax.training.loop import fit

from conftest import SyntheticData, run_child, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    phase = training_phase(config)
    return dataclasses.replace(phase, budget=training_budget(config, phase.model, (8, 8, 1)))


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


PARALLEL_CHILD = r"""
import dataclasses, functools, json, sys
import jax, numpy as np
sys.path.insert(0, TESTS_DIR)
from conftest import SyntheticData, tiny_config
from soft_prune_jax.pipeline.budget import training_budget
from soft_prune_jax.training.experiment import training_phase
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.state import create_learning_rate_fn, create_optimizer, create_train_state, init_variables
from soft_prune_jax.training.steps import AXIS, train_step

config = tiny_config(batch_size=16, sparsity_lambda=1e-2, target_macs_ratio=0.5, cost_aware_penalty=True)
phase = training_phase(config)
budget = training_budget(config, phase.model, (8, 8, 1)).bind(10)
data = SyntheticData()
variables = init_variables(phase.model, jax.random.PRNGKey(0), data.shape)
lr_fn = create_learning_rate_fn(0.1, (), 0.1, 16)
tx = create_optimizer(config, lr_fn, variables["params"])
state0 = create_train_state(jax.random.PRNGKey(1), variables, tx, budget.init_state())
batches = [next(data.train_iterator(config, local_devices=1, seed=s)) for s in range(3)]

def run(kind, devices):
    parallel = Parallel(kind, devices)
    step = parallel.map(functools.partial(train_step, model=phase.model.clone(axis_name=AXIS), tx=tx,
                                          learning_rate_fn=lr_fn, regulariser=phase.regulariser, budget=budget))
    state, n = parallel.replicate(state0), len(devices)
    for b in batches:
        state, metrics = step(state, parallel.shard_batch({k: v.reshape((n, -1) + v.shape[2:]) for k, v in b.items()}))
    state, metrics = parallel.unreplicate(state), parallel.unreplicate(metrics)
    return {"log_lambda": float(state.controller.log_lambda), "integral": float(state.controller.integral),
            "macs_hard_ratio": float(metrics["macs_hard_ratio"]), "lambda": float(metrics["lambda"]),
            "params": [np.asarray(x).ravel().tolist() for x in jax.tree_util.tree_leaves(state.params)]}

devices = jax.local_devices()
print("RESULT " + json.dumps({"devices": len(devices), "initial_log_lambda": float(state0.controller.log_lambda),
                              "single": run("pmap", devices[:1]), "pmap": run("pmap", devices),
                              "shard_map": run("shard_map", devices)}))
"""


@pytest.mark.slow
def test_controller_is_the_same_under_pmap_shard_map_and_one_device():
    child = PARALLEL_CHILD.replace("TESTS_DIR", repr(os.path.join(ROOT, "tests")))
    result = run_child(child, cwd=ROOT, devices=2, timeout=300)
    assert result["devices"] == 2
    single = result["single"]
    assert single["log_lambda"] != pytest.approx(result["initial_log_lambda"])  # the controller moved
    for kind in ("pmap", "shard_map"):
        for key in ("log_lambda", "integral", "macs_hard_ratio", "lambda"):
            assert result[kind][key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), (kind, key)
        for a, b in zip(result[kind]["params"], single["params"]):
            np.testing.assert_allclose(a, b, atol=1e-5)
