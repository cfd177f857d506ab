"""Surgery is exact: the compact model reproduces the hard-masked model, for every architecture.

Property-based over random BN parameters, random masks (including empty layers and removed blocks)
and channel alignment. Tiny widths keep every example to a fraction of a second.
"""

import jax
import numpy as np
import pytest
from conftest import TINY, assert_close, evaluate, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soft_prune_jax.method import masks as M
from soft_prune_jax.compact import structure, surgery

PROPERTY = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(TINY))
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), fraction=st.sampled_from([0.0, 0.3, 0.6, 0.95, 1.0]),
       round_to=st.sampled_from([1, 1, 4]))
def test_compact_equals_hard_masked_random_bn(name, seed, fraction, round_to):
    model, variables, x = tiny(name)
    variables = surgery.randomize_bn(variables, seed, fraction)
    compact, compact_vars = surgery.prune(model, variables, round_to=round_to)
    expected = evaluate(model, variables, x)
    if round_to > 1:  # the compact model equals the model hard-masked with the rounded mask
        rounded = surgery.masks_of(surgery.plan(model, variables, round_to=round_to))
        expected = evaluate(model, variables, x, rounded)
    assert_close(evaluate(compact, compact_vars, x), expected)


@pytest.mark.parametrize("name", sorted(TINY))
@PROPERTY
@given(data=st.data())
def test_compact_equals_model_under_arbitrary_masks(name, data):
    """Random 0/1 masks (any pattern, empty layers included) given explicitly, as Network Slimming does."""
    model, variables, x = tiny(name)
    variables = surgery.randomize_bn(variables, data.draw(st.integers(0, 1000)), 0.0)
    masks = {}
    for group in structure.describe(model).groups:
        width = int(M.masked_layers(variables["params"])[group.name]["scale"].shape[0])
        bits = data.draw(st.lists(st.booleans(), min_size=width, max_size=width))
        masks[group.name] = np.asarray(bits, np.float32)
    compact, compact_vars = surgery.prune(model, variables, masks=masks)
    used = surgery.masks_of(surgery.plan(model, variables, masks=masks))  # keep-one may add a channel
    assert_close(evaluate(compact, compact_vars, x), evaluate(model, variables, x, used))


@pytest.mark.parametrize("name", sorted(TINY))
def test_compact_is_smaller_and_widths_follow_masks(name):
    model, variables, x = tiny(name)
    variables = surgery.randomize_bn(variables, 3, 0.5)
    layer_plans = surgery.plan(model, variables)
    compact, compact_vars = surgery.prune(model, variables)
    assert type(compact) is type(model) and compact.mask is None
    count = lambda v: sum(a.size for a in jax.tree.leaves(v["params"]))
    assert count(compact_vars) < count(variables)
    # every surviving masked unit has exactly the planned number of channels
    compact_layers = M.masked_layers(compact_vars["params"])
    for unit, p in layer_plans.items():
        if unit in compact_layers:
            assert compact_layers[unit]["scale"].shape == (len(p.kept),)


def test_fully_pruned_preact_blocks_are_removed():
    model, variables, x = tiny("resnet56")
    variables = surgery.randomize_bn(variables, 0, 0.0)
    masks = surgery.model_hard_masks(model, variables["params"])
    masks = {k: (np.zeros_like(v) if k.startswith(("block1/", "block4/")) else v) for k, v in masks.items()}
    compact, compact_vars = surgery.prune(model, variables, masks=masks)
    assert compact.block_widths[1] == (0,) and compact.block_widths[4] == (0,)
    assert "block1" not in compact_vars["params"]  # a non-first block with an empty branch is the identity
    assert set(compact_vars["params"]["block4"]) == {"bn1", "proj"}  # a first block keeps its shortcut
    assert_close(evaluate(compact, compact_vars, x), evaluate(model, variables, x, masks))


def test_vgg_never_loses_its_last_channel():
    model, variables, x = tiny("vgg16")
    variables = surgery.randomize_bn(variables, 0, 1.0)  # every channel would go
    layer_plans = surgery.plan(model, variables)
    assert all(len(p.kept) == 1 and p.kept_by_fallback for p in layer_plans.values())
    compact, compact_vars = surgery.prune(model, variables)
    assert compact.conv_widths == [1] * len(model.conv_widths)
    assert_close(evaluate(compact, compact_vars, x), evaluate(model, variables, x))


@pytest.mark.parametrize("round_to", [2, 4, 8])
def test_round_to_aligns_every_nonempty_width(round_to):
    model, variables, x = tiny("resnet56")
    variables = surgery.randomize_bn(variables, 7, 0.5)
    plain = surgery.plan(model, variables)
    rounded = surgery.plan(model, variables, round_to=round_to)
    for unit, p in rounded.items():
        k = len(p.kept)
        assert k == p.total or k % round_to == 0
        assert set(plain[unit].kept) <= set(p.kept)  # only adds channels
        assert k - len(plain[unit].kept) < round_to
        if len(plain[unit].kept) == 0:
            assert k == 0  # an empty layer stays empty (its block is removed)


def test_round_to_adds_the_lowest_pi_channels():
    model, variables, x = tiny("fmnist_cnn")
    variables = surgery.randomize_bn(variables, 1, 0.7)
    plain, rounded = surgery.plan(model, variables), surgery.plan(model, variables, round_to=4)
    for unit, layer in M.masked_layers(variables["params"]).items():
        added = sorted(set(rounded[unit].kept) - set(plain[unit].kept))
        rest = sorted(set(range(rounded[unit].total)) - set(rounded[unit].kept))
        q = M.deactivation_probability(layer["scale"], layer["bias"])
        pi = np.asarray(M.prune_probability(q))
        if added and rest:
            assert max(pi[added]) <= min(pi[rest])


def test_prune_rejects_bad_input():
    model, variables, x = tiny("resnet56")
    with pytest.raises(ValueError, match="round_to=0"):
        surgery.prune(model, variables, round_to=0)
    with pytest.raises(surgery.SurgeryError, match="unknown"):
        surgery.prune(model, variables, masks={"nope/masked_bn1": np.ones(3)})
    other, other_vars, _ = tiny("densenet40")
    with pytest.raises(surgery.SurgeryError):
        surgery.prune(model, other_vars)
    masks = surgery.model_hard_masks(model, variables["params"])
    name = sorted(masks)[0]
    masks[name] = np.ones(masks[name].size + 1)
    with pytest.raises(surgery.SurgeryError, match="shape"):
        surgery.prune(model, variables, masks=masks)
    with pytest.raises(TypeError, match="no structure description"):
        structure.describe(jax.numpy)  # not a model


def test_structure_groups_match_masked_layers():
    """Every masked unit in the params tree has exactly one group, and every slice names a real array."""
    for name in TINY:
        model, variables, _ = tiny(name)
        groups = structure.describe(model).groups
        assert sorted(g.name for g in groups) == sorted(M.masked_layers(variables["params"]))
        for g in groups:
            for s in g.slices:
                leaf = variables[s.collection]
                for part in s.path:
                    leaf = leaf[part]
                assert leaf.shape[s.axis] == M.masked_layers(variables["params"])[g.name]["scale"].shape[0]


def test_pruning_a_compact_model_again_composes_selections():
    """A compact model rebuilt with masks on prunes again; channel selections compose."""
    model, variables, x = tiny("densenet40")
    variables = surgery.randomize_bn(variables, 5, 0.4)
    compact, compact_vars = surgery.prune(model, variables)
    masked_again = compact.clone(mask=M.MaskConfig())
    compact_vars = surgery.randomize_bn(compact_vars, 6, 0.4)
    twice, twice_vars = surgery.prune(masked_again, compact_vars)
    assert_close(evaluate(twice, twice_vars, x), evaluate(masked_again, compact_vars, x))
