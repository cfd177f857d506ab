"""Network Slimming baseline: a global |scale| threshold, optionally chosen to match a MAC budget."""

import numpy as np
import pytest

from soft_prune_jax.measure import flops

from soft_prune_jax import pipeline

from soft_prune_jax.compact import surgery
from soft_prune_jax.method import masks as M
from soft_prune_jax.models import get_model

SHAPE = (12, 12, 1)


@pytest.fixture(scope="module")
def dense():
    model = get_model("fmnist_cnn", 10, widths=(8, "M", 12, 16), mask=None)
    return model, surgery.random_variables(model, (1,) + SHAPE, seed=3, prune_fraction=0.0)


def test_global_threshold_keeps_the_largest_scales(dense):
    model, variables = dense
    masks = pipeline.slimming_masks(variables["params"], 0.5)
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
    masks = pipeline.slimming_masks_for_macs(model, variables, SHAPE, target)
    compact, compact_vars = surgery.prune(model, variables, masks=masks)
    ratio = flops.count(compact, compact_vars, SHAPE).macs / dense_macs
    assert ratio <= target + 1e-9
    # one more channel (the next largest |scale|) would break the budget, so the ratio is close to it
    assert ratio > target - 0.15
