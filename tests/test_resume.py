"""A run killed after a checkpoint and started again ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from soft_prune_jax.pipeline import model_path
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.training.eval_loop import evaluate
from soft_prune_jax.training.loop import fit
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.steps import AXIS, eval_step

from conftest import SyntheticData, tiny_config

EPOCHS, STEPS_PER_EPOCH = 3, 16  # 256 examples / batch 16


def training_phase(config):
    """The train phase of the traced path (the tiny fmnist_cnn behind its SCP masks)."""
    return model_path.training_phase(config, SyntheticData().shape)


def _checkpoint_steps(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints", "train")) if d.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    config = tiny_config(num_epochs=EPOCHS, lr_boundaries=(2,), keep_checkpoints=2)
    data = SyntheticData()
    return workdir, data, fit(config, workdir, training_phase(config), dataset=data)


def test_uninterrupted_run_learns_and_keeps_last_checkpoints(uninterrupted):
    workdir, data, result = uninterrupted
    assert int(result.state.step) == result.steps == EPOCHS * STEPS_PER_EPOCH == data.served
    assert np.isfinite(result.train_metrics["loss"])
    assert _checkpoint_steps(workdir) == [32, 48]  # every epoch, keep_checkpoints=2
    assert os.path.isdir(os.path.join(workdir, "tensorboard", "train"))
    config = tiny_config()
    parallel = Parallel("pmap")
    model = training_phase(config).model.clone(axis_name=AXIS)
    p_eval = parallel.map(lambda v, b: eval_step(v, b, model=model))
    metrics = evaluate(
        parallel, p_eval, parallel.replicate(result.state.variables), data.eval_iterator(config, local_devices=1)
    )
    assert metrics["count"] == 36
    assert metrics["accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert metrics["accuracy"] <= metrics["top5_accuracy"] <= 1.0


def test_killed_run_resumes_to_identical_parameters(uninterrupted, tmp_path):
    _, _, expected = uninterrupted
    config = tiny_config(num_epochs=EPOCHS, lr_boundaries=(2,), keep_checkpoints=2)
    workdir = str(tmp_path)
    killed = SyntheticData(kill_at=21)  # in the middle of epoch 2, after the checkpoint at step 16
    with pytest.raises(KeyboardInterrupt):
        fit(config, workdir, training_phase(config), dataset=killed)
    assert _checkpoint_steps(workdir) == [16]

    # The same command again, with a log interval that does not change the result.
    config = tiny_config(num_epochs=EPOCHS, lr_boundaries=(2,), keep_checkpoints=2, log_every_steps=3)
    resumed_data = SyntheticData()
    resumed = fit(config, workdir, training_phase(config), dataset=resumed_data)
    assert resumed_data.served == EPOCHS * STEPS_PER_EPOCH - 16  # only the steps after the checkpoint
    assert int(resumed.state.step) == int(expected.state.step)
    for name in ("params", "batch_stats", "opt_state"):
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, getattr(resumed.state, name), getattr(expected.state, name)
        )

    # A finished run started again does nothing and returns the same state.
    again = SyntheticData()
    final = fit(config, workdir, training_phase(config), dataset=again)
    assert again.served == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, final.state.params, expected.state.params)


def test_workdir_refuses_a_different_config(tmp_path):
    workdir = str(tmp_path)
    ckpt_lib.ensure_workdir_config(workdir, tiny_config())
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["sparsity_lambda"] == tiny_config().sparsity_lambda
    # Result-neutral fields may change; the record is not rewritten.
    ckpt_lib.ensure_workdir_config(workdir, tiny_config(log_every_steps=7, keep_checkpoints=1))
    assert json.loads((tmp_path / "config.json").read_text()) == recorded
    with pytest.raises(ValueError, match=r"different config \(sparsity_lambda: 0.001 -> 0.01\)"):
        ckpt_lib.ensure_workdir_config(workdir, tiny_config(sparsity_lambda=0.01))
    with pytest.raises(ValueError, match=r"lr_boundaries: \[1\] -> \[1, 2\]"):
        ckpt_lib.ensure_workdir_config(workdir, tiny_config(lr_boundaries=(1, 2)))
    assert json.loads((tmp_path / "config.json").read_text()) == recorded


def test_checkpointer_round_trip_and_missing_checkpoint(tmp_path):
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(5), "nested": {"b": np.ones(2)}}
    checkpointer = ckpt_lib.TrainCheckpointer(str(tmp_path / "ck"), max_to_keep=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpointer.restore(state)
    assert checkpointer.restore_or(state) is state
    checkpointer.save(5, state)
    checkpointer.save(7, jax.tree_util.tree_map(lambda x: x + 1, state))
    checkpointer.wait_until_finished()
    assert checkpointer.all_steps() == [7]
    restored = checkpointer.restore(state)
    np.testing.assert_array_equal(restored["w"], state["w"] + 1)
    np.testing.assert_array_equal(checkpointer.restore_raw()["nested"]["b"], 2.0)
    checkpointer.close()
    with pytest.raises(ValueError, match="keep_checkpoints=0"):
        ckpt_lib.TrainCheckpointer(str(tmp_path / "other"), max_to_keep=0)
