"""Network Slimming as a method plug-in: a global |scale| threshold over the units of the traced graph,
optionally at a MAC budget priced by the cut's own count."""

import jax
import pytest

from soft_prune_jax.compact import interpret as I
from soft_prune_jax.models.user import UserModel
from soft_prune_jax.pruners import get_method, slimming
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import macs, masked

from conftest import tiny, tiny_config


@pytest.fixture(scope="module")
def dense():
    """(units, {'params': unit view}, cut MAC ratio of unit masks) of the tiny fmnist_cnn (8, 12, 16
    channels), every channel alive: what slimming's cut sees after training without masks."""
    model, variables, x = tiny("fmnist_cnn", seed=3, fraction=0.0)
    units = masked.UnitSet.analyze(UserModel("fmnist_cnn", "linen", lambda _: model, model), variables, x)
    consts = I.constant_values(units.analysis, jax.tree_util.tree_leaves(dict(variables)))
    group_ratio = macs.macs_ratio_fn(units.analysis, consts, M.MaskConfig(), 1)
    return units, {"params": units.unit_view(variables["params"])}, lambda m: group_ratio(units.group_keep(m))


def slimming_config(**slimming_fields):
    config = tiny_config(method="slimming")
    config.slimming.update(slimming_fields)
    return config


def test_global_threshold_keeps_the_largest_scales(dense):
    _, view, _ = dense
    masks = slimming.global_threshold_masks(view["params"], 0.5)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == 18  # half of 8 + 12 + 16
    scales = slimming.scale_magnitudes(view["params"])
    kept_min = min(scales[n][m > 0].min() for n, m in masks.items() if m.any())
    dropped_max = max(scales[n][m == 0].max() for n, m in masks.items() if (m == 0).any())
    assert kept_min >= dropped_max


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_masks_for_a_mac_budget_meet_it_closely(dense, target):
    """The cut's MACs (``traced.macs``) of slimming's masks, as ``pipeline.model_path.cut`` prices them."""
    _, view, ratio = dense
    masks = get_method("slimming").surgery_masks(slimming_config(target_macs_ratio=target), view, ratio)
    assert ratio(masks) <= target + 1e-9
    # one more channel (the next largest |scale|) would break the budget, so the ratio is close to it
    assert ratio(masks) > target - 0.15
    assert get_method("slimming").settings(slimming_config(target_macs_ratio=target))["cut"] == (
        f"global |scale| threshold at matched MACs (at most {target:g} of the dense MACs)"
    )


def test_without_units_is_one_line():
    with pytest.raises(ValueError, match="the model has no units to prune"):
        slimming.global_threshold_masks({}, 0.5)
    with pytest.raises(ValueError, match=r"slimming\.target_channel_ratio=0\.0 is invalid"):
        slimming.global_threshold_masks({}, 0.0)
