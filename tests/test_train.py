"""Tests of soft_prune_jax.training: schedule, optimiser, the methods' loss terms, steps and the loop,
with the train phase of the traced path (``pipeline.model_path.training_phase``) on the tiny fmnist_cnn.

The synthetic dataset and the tiny config live in conftest.py.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from soft_prune_jax.pipeline import model_path
from soft_prune_jax.pruners import get_method
from soft_prune_jax.scp import masks as M
from soft_prune_jax.training.loop import fit
from soft_prune_jax.training.parallel import check_global_batch
from soft_prune_jax.training.state import create_learning_rate_fn, create_optimizer, steps_per_epoch, weight_decay_mask
from soft_prune_jax.training.steps import eval_step

from conftest import SyntheticData, assert_close, normal, tiny_config

SHAPE = SyntheticData().shape


def training_phase(config):
    return model_path.training_phase(config, SHAPE)


@pytest.fixture(scope="module")
def tiny_model_and_variables():
    """The SCP train phase's model (the tiny fmnist_cnn behind its masks) and fresh variables."""
    model = training_phase(tiny_config()).model
    return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), train=False)


def test_schedule_drops_at_epoch_boundaries_in_steps():
    lr = create_learning_rate_fn(0.1, (2, 3), 0.1, steps_per_epoch=5)
    values = [float(lr(s)) for s in range(20)]
    np.testing.assert_allclose(values[:10], 0.1, rtol=1e-6)
    np.testing.assert_allclose(values[10:15], 0.01, rtol=1e-6)
    np.testing.assert_allclose(values[15:], 0.001, rtol=1e-5)


def test_steps_per_epoch_and_batch_checks():
    assert steps_per_epoch(50_000, 64) == 781
    with pytest.raises(ValueError, match="batch_size=128"):
        steps_per_epoch(100, 128)
    assert check_global_batch(64, 8) == 8
    with pytest.raises(ValueError, match="batch_size=60 is not divisible by the 8 devices"):
        check_global_batch(60, 8)


def test_weight_decay_on_kernels_and_bn_scales_only(tiny_model_and_variables):
    _, variables = tiny_model_and_variables
    params = variables["params"]
    flags = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(weight_decay_mask(params))}
    assert flags["['conv0']['kernel']"] and flags["['head']['kernel']"] and flags["['masked_bn0']['scale']"]
    assert not flags["['masked_bn0']['bias']"] and not flags["['head']['bias']"]
    # With a zero gradient, the first Nesterov step is -lr (1 + momentum) wd w on decayed leaves only.
    config = tiny_config()
    tx = create_optimizer(config, optax.constant_schedule(0.1), params)
    params = jax.tree_util.tree_map(lambda x: x + 0.5, params)  # biases start at 0: make them non-zero
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["conv0"]["kernel"], -0.1 * 1.9 * 1e-4 * params["conv0"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(
        updates["masked_bn0"]["scale"], -0.1 * 1.9 * 1e-4 * params["masked_bn0"]["scale"], rtol=1e-5
    )
    np.testing.assert_array_equal(updates["masked_bn0"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["head"]["bias"], 0.0)


def test_regularisers_per_method(tiny_model_and_variables):
    """Each method's loss term over the units the traced path finds (a BN's gamma, beta = its scale, bias)."""
    _, variables = tiny_model_and_variables
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["masked_bn0"] = {"scale": jnp.array([1.0, -2.0, 0.5, 0.0]), "bias": jnp.array([0.1, -0.3, 0.0, 1.0])}

    def regulariser(**overrides):
        return training_phase(tiny_config(**overrides)).regulariser(params)

    expected_scp = 0.5 * (
        0.8 + 2.0 * 3.5 + float(M.layer_penalty(params["masked_bn1"]["scale"], params["masked_bn1"]["bias"], 2.0))
    )
    np.testing.assert_allclose(regulariser(method="scp", sparsity_lambda=0.5, sparsity_s=2.0), expected_scp, rtol=1e-6)
    np.testing.assert_allclose(regulariser(method="slimming"), 1e-4 * (3.5 + 8.0), rtol=1e-6)  # 8 unit scales
    assert float(regulariser(method="dense")) == 0.0
    assert get_method("dense").mask_config(tiny_config(method="dense")) is None
    assert get_method("slimming").mask_config(tiny_config(method="slimming")) is None
    with pytest.raises(ValueError, match="method='l1' is invalid: expected one of dense, scp, slimming"):
        get_method("l1")


def test_training_phase_follows_the_method():
    scp = training_phase(tiny_config(method="scp"))
    assert scp.mask is not None and scp.model.mode == "soft" and scp.model.mask == scp.mask
    slim = training_phase(tiny_config(method="slimming"))
    assert slim.mask is None and slim.model.mode == "none"
    variables = {"params": {"masked_bn0": {"scale": jnp.ones(3), "bias": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}}
    started = slim.init_transform(variables)["params"]
    np.testing.assert_array_equal(started["masked_bn0"]["scale"], 0.5)  # Liu et al.'s BN scale init
    np.testing.assert_array_equal(started["masked_bn0"]["bias"], 1.0)
    np.testing.assert_array_equal(started["head"]["kernel"], 1.0)
    assert scp.init_transform(variables) is variables


def _all_dropped(variables, layer="masked_bn1"):
    """``variables`` with every channel of ``layer`` dropped by its hard mask (z = 17.05 / 10 > 1.645:
    pi > 0.5) but alive (running mean -3: (x + 3) 10 - 17 > 0), so keeping one changes the output."""
    params, stats = dict(variables["params"]), dict(variables["batch_stats"])
    n = params[layer]["scale"].shape[0]
    params[layer] = {"scale": 10.0 + 0.01 * jnp.arange(n), "bias": jnp.full(n, -17.0)}
    stats[layer] = {"mean": jnp.full(n, -3.0), "var": jnp.ones(n)}
    return {"params": params, "batch_stats": stats}


def test_validation_masks_keep_one_channel_as_the_cut_does(tiny_model_and_variables):
    """A layer whose hard masks drop every channel: validation during training (the hard masks) keeps
    its most alive channel as the cut does, so it scores the compact model, not a constant network."""
    model, variables = tiny_model_and_variables
    config = tiny_config()
    variables = _all_dropped(variables)
    assert not np.any(M.hard_masks(model.units.unit_view(variables["params"]), model.mask)["masked_bn:masked_bn1"])
    x = normal(1, (5,) + SHAPE)
    validated = model.apply(variables, x, train=False)
    compact, compact_vars = model_path.cut(config, variables, SHAPE)
    assert compact.program.plans["masked_bn1"].kept.tolist() == [7]  # the lowest z: the largest scale
    assert_close(validated, compact.apply(compact_vars, x))
    assert float(jnp.max(jnp.std(validated, axis=0))) > 1e-3  # not constant


def test_progress_macs_are_the_cut_of_the_hard_masks(tiny_model_and_variables):
    """The progress line's kept-MACs ratio (``model_path.progress_macs``) is the MACs of the compact model
    the cut of the same variables gives (keep-one included); dense and slimming training have none."""
    from soft_prune_jax.traced import macs

    _, variables = tiny_model_and_variables
    config = tiny_config()
    phase = training_phase(config)
    macs_fn = model_path.progress_macs(config, SHAPE, phase)
    dense = macs.count(phase.model.units.analysis).macs
    assert macs_fn(variables) == {"macs": dense, "ratio": 1.0}  # fresh: every channel alive
    dropped = _all_dropped(variables)
    compact, _ = model_path.cut(config, dropped, SHAPE)
    got = macs_fn(dropped)
    assert got["ratio"] == pytest.approx(macs.of_compact(compact).macs / dense) and got["ratio"] < 0.5
    assert got["macs"] == pytest.approx(got["ratio"] * dense)
    for method in ("dense", "slimming"):
        unmasked = tiny_config(method=method)
        assert model_path.progress_macs(unmasked, SHAPE, training_phase(unmasked)) is None


def test_eval_step_ignores_padding_and_counts_top5(tiny_model_and_variables):
    model, variables = tiny_model_and_variables
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 8, 1)), jnp.float32)
    step = jax.jit(lambda v, b: eval_step(v, b, model=model, axis_name=None))
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    order = jnp.argsort(-logits, axis=-1)
    # Examples 0-3 right at top-1; 4 ranked 3rd (top-5 only); 5 ranked last (wrong either way).
    labels = order[:, 0].at[4].set(order[4, 2]).at[5].set(order[5, -1])
    mask = jnp.array([1, 1, 1, 1, 1, 0], jnp.float32)
    sums = step(variables, {"image": x, "label": labels, "mask": mask})
    assert float(sums["correct"]) == 4.0 and float(sums["correct_top5"]) == 5.0 and float(sums["count"]) == 5.0
    sums = step(variables, {"image": x, "label": labels})
    assert float(sums["correct"]) == 4.0 and float(sums["correct_top5"]) == 5.0 and float(sums["count"]) == 6.0


def test_no_top5_below_five_classes():
    config = tiny_config(num_classes=4)
    model = training_phase(config).model
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    sums = eval_step(
        variables, {"image": jnp.zeros((2, 8, 8, 1)), "label": jnp.zeros(2, jnp.int32)}, model=model, axis_name=None
    )
    assert set(sums) == {"correct", "loss", "count"}


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(num_epochs=3)
    data = SyntheticData(nan_at=20)  # the 21st batch (step 21, in epoch 2) is NaN
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 21 .*step 16\)"):
        fit(config, str(tmp_path), training_phase(config), dataset=data)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints" / "train") if d.isdigit())
    assert steps == [16]


def test_summary_tags_are_legal_tensorboard_names(tmp_path, caplog):
    from soft_prune_jax.training.summaries import Summaries, tag

    assert tag("kept_channels/masked_bn:masked_bn0") == "kept_channels/masked_bn_masked_bn0"
    assert tag("train/loss-1.5") == "train/loss-1.5"
    writer = Summaries(str(tmp_path))
    with caplog.at_level("INFO"):
        writer.scalars(0, {"kept_channels/masked_bn:masked_bn0": 3.0})
    writer.close()
    assert not [r for r in caplog.records if "illegal" in r.getMessage()]


def test_init_compiled_cheaply_draws_the_weights_of_the_optimised_compile():
    """init_variables compiles the init at XLA's cheapest CPU optimisation (it runs once): the weights
    must be the fully optimised compile's, up to float32 rounding, and differ between keys."""
    from soft_prune_jax.models import get_model
    from soft_prune_jax.training.state import init_variables

    model = get_model("fmnist_cnn", num_classes=10, widths=(8, "M", 16))
    cheap = init_variables(model, jax.random.key(3), (12, 12, 1))
    full = jax.jit(lambda k, x: model.init({"params": k}, x, train=False))(jax.random.key(3), jnp.zeros((1, 12, 12, 1)))
    other = init_variables(model, jax.random.key(4), (12, 12, 1))
    leaves = jax.tree_util.tree_leaves
    for (path, a), b, c in zip(jax.tree_util.tree_leaves_with_path(cheap), leaves(full), leaves(other)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
        if np.ndim(a) == 4:  # conv kernels: a fresh draw per key
            assert not np.allclose(a, c), jax.tree_util.keystr(path)
