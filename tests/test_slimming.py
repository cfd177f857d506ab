"""Network Slimming as a method plug-in: a global |scale| threshold, optionally at a MAC budget, and a
keep-one fallback by |scale| (not SCP's pi)."""

import numpy as np
import pytest

from soft_prune_jax.compact import surgery
from soft_prune_jax.measure import flops
from soft_prune_jax.method import masks as M
from soft_prune_jax.methods import get_method, slimming
from soft_prune_jax.models import get_model
from soft_prune_jax.pipeline.cut import surgery_choice

from conftest import tiny_config

SHAPE = (12, 12, 1)
WIDTHS = (8, "M", 12, 16)


@pytest.fixture(scope="module")
def dense():
    model = get_model("fmnist_cnn", 10, widths=WIDTHS, mask=None)
    return model, surgery.random_variables(model, (1,) + SHAPE, seed=3, prune_fraction=0.0)


def slimming_config(**slimming_fields):
    config = tiny_config(method="slimming", model_kwargs={"widths": WIDTHS})
    config.slimming.update(slimming_fields)
    return config


def test_global_threshold_keeps_the_largest_scales(dense):
    model, variables = dense
    masks = slimming.global_threshold_masks(variables["params"], 0.5)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == 18  # half of 8 + 12 + 16
    scales = {n: np.abs(np.asarray(layer["scale"])) for n, layer in M.masked_layers(variables["params"]).items()}
    kept_min = min(scales[n][m > 0].min() for n, m in masks.items() if m.any())
    dropped_max = max(scales[n][m == 0].max() for n, m in masks.items() if (m == 0).any())
    assert kept_min >= dropped_max


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_masks_for_a_mac_budget_meet_it_closely(dense, target):
    model, variables = dense
    dense_macs = flops.count(model, variables, SHAPE).macs
    choice = surgery_choice(slimming_config(target_macs_ratio=target), model, variables, SHAPE)
    compact, compact_vars = surgery.prune(model, variables, **choice)
    ratio = flops.count(compact, compact_vars, SHAPE).macs / dense_macs
    assert ratio <= target + 1e-9
    # one more channel (the next largest |scale|) would break the budget, so the ratio is close to it
    assert ratio > target - 0.15
    assert get_method("slimming").settings(slimming_config(target_macs_ratio=target))["cut"] == (
        f"global |scale| threshold at matched MACs (at most {target:g} of the dense MACs)"
    )


def test_keep_one_fallback_keeps_the_largest_scale_not_the_lowest_pi(dense):
    model, variables = dense
    params = dict(variables["params"])
    # The last layer's scales are far below every other layer's: the global threshold empties it.
    # Channel 3 has the largest |scale| but a very negative bias (pi ~ 1); channel 5 the lowest pi.
    scale = np.full(16, 1e-3, np.float32)
    scale[3] = 5e-3
    bias = np.full(16, -1.0, np.float32)
    bias[5] = 1.0
    params["masked_bn2"] = {"scale": scale, "bias": bias}
    variables = {**variables, "params": params}
    choice = surgery_choice(slimming_config(target_channel_ratio=0.5), model, variables, SHAPE)
    assert not choice["masks"]["masked_bn2"].any()
    plans = surgery.plan(model, variables, **choice)
    assert plans["masked_bn2"].kept_by_fallback and plans["masked_bn2"].kept.tolist() == [3]
    # SCP's rule (the model's own ranking by pi) would have kept channel 5.
    assert surgery.plan(model, variables, masks=choice["masks"])["masked_bn2"].kept.tolist() == [5]
    assert get_method("slimming").keep_one_rule == "the largest |BN scale|"


def test_round_to_pads_by_scale_too(dense):
    model, variables = dense
    choice = surgery_choice(slimming_config(target_channel_ratio=0.5), model, variables, SHAPE)
    plans = surgery.plan(model, variables, round_to=4, **choice)
    scales = slimming.scale_magnitudes(variables["params"])
    for name, p in plans.items():
        assert len(p.kept) % 4 == 0 or len(p.kept) == p.total
        dropped = np.setdiff1d(np.arange(p.total), p.kept)
        if len(dropped):  # every kept channel outranks every dropped one by |scale|
            assert scales[name][p.kept].min() >= scales[name][dropped].max()
