"""Surgery is exact: the compact model reproduces the hard-masked model, for every architecture.

Property-based over random BN parameters, random masks (including empty layers and removed blocks)
and channel alignment. Tiny widths keep every example to a fraction of a second.
"""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soft_prune_jax.compact import structure, surgery
from soft_prune_jax.compact.fold import fold_batchnorm
from soft_prune_jax.method import masks as M

from conftest import TINY, assert_close, evaluate, tiny

PROPERTY = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(TINY))
@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    fraction=st.sampled_from([0.0, 0.3, 0.6, 0.95, 1.0]),
    round_to=st.sampled_from([1, 1, 4]),
)
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


def test_round_to_adds_the_lowest_z_channels():
    model, variables, x = tiny("fmnist_cnn")
    variables = surgery.randomize_bn(variables, 1, 0.7)
    plain, rounded = surgery.plan(model, variables), surgery.plan(model, variables, round_to=4)
    for unit, layer in M.masked_layers(variables["params"]).items():
        added = sorted(set(rounded[unit].kept) - set(plain[unit].kept))
        rest = sorted(set(range(rounded[unit].total)) - set(rounded[unit].kept))
        z = np.asarray(M.deactivation_z(layer["scale"], layer["bias"]))
        if added and rest:
            assert max(z[added]) <= min(z[rest])


def saturated(name, seed=0):
    """A tiny model whose every masked channel is dead with q = 1 in float32 (pi ties), z all distinct."""
    model, variables, x = tiny(name)
    variables = surgery.randomize_bn(variables, seed, 1.0)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(np.asarray, variables["params"])
    for unit in M.masked_layers(params):
        node = params
        for part in unit.split("/"):
            node = node[part]
        node["scale"] = np.ones_like(node["scale"])
        node["bias"] = -8.0 - rng.permutation(node["bias"].size).astype(np.float32)  # z = 8.05, 9.05, ...
    return model, {**variables, "params": params}, x


def test_keep_one_fallback_breaks_saturated_pi_ties_on_z():
    model, variables, x = saturated("vgg16")
    layers = M.masked_layers(variables["params"])
    for unit, p in surgery.plan(model, variables).items():
        pi = np.asarray(M.prune_probability(M.deactivation_probability(layers[unit]["scale"], layers[unit]["bias"])))
        assert np.all(pi == pi[0])  # argmin pi would keep channel 0
        assert p.kept_by_fallback and list(p.kept) == [int(np.argmax(layers[unit]["bias"]))]
    compact, compact_vars = surgery.prune(model, variables)  # the model's own keep-one rule agrees
    assert_close(evaluate(compact, compact_vars, x), evaluate(model, variables, x))


def test_round_to_padding_breaks_saturated_pi_ties_on_z():
    model, variables, x = saturated("vgg16", seed=3)
    layers = M.masked_layers(variables["params"])
    for unit, p in surgery.plan(model, variables, round_to=4).items():
        z = np.asarray(M.deactivation_z(layers[unit]["scale"], layers[unit]["bias"]))
        assert sorted(p.kept) == sorted(np.argsort(z)[: min(4, p.total)])


def test_scores_replace_the_ranking():
    model, variables, x = saturated("vgg16", seed=4)
    names = list(surgery.plan(model, variables))
    scores = {unit: np.arange(p.total, dtype=np.float32) for unit, p in surgery.plan(model, variables).items()}
    for p in surgery.plan(model, variables, round_to=2, scores=scores).values():
        assert list(p.kept) == [p.total - 2, p.total - 1]  # the highest scores, whatever z says
    default = surgery.plan(model, variables, round_to=2, scores=surgery.default_scores(model, variables))
    assert {u: list(p.kept) for u, p in default.items()} == {
        u: list(p.kept) for u, p in surgery.plan(model, variables, round_to=2).items()
    }
    with pytest.raises(surgery.SurgeryError, match="missing"):
        surgery.plan(model, variables, scores={names[0]: scores[names[0]]})
    with pytest.raises(surgery.SurgeryError, match="shape"):
        surgery.plan(model, variables, scores={**scores, names[0]: np.ones(1)})


# ----------------------------------------------------------------------------------------------
# Mixed empty cases that random masks reach only by chance: each compact model equals the model
# hard-masked the same way (and, where a folded conv then reads nothing, so does its BN-folded export).
# ----------------------------------------------------------------------------------------------


def cut_with_empty(name, empty, seed=0, fold=False):
    """Prunes tiny ``name`` with every channel kept except the units in ``empty`` (all dropped)."""
    model, variables, x = tiny(name)
    variables = surgery.randomize_bn(variables, seed, 0.0)
    masks = surgery.model_hard_masks(model, variables["params"])
    assert set(empty) <= set(masks)
    masks = {k: (np.zeros_like(v) if k in empty else v) for k, v in masks.items()}
    compact, compact_vars = surgery.prune(model, variables, masks=masks)
    out = evaluate(compact, compact_vars, x)
    used = surgery.masks_of(surgery.plan(model, variables, masks=masks))  # chains keep one channel
    assert_close(out, evaluate(model, variables, x, used))
    if fold:
        folded, folded_vars = fold_batchnorm(compact, compact_vars)
        assert_close(evaluate(folded, folded_vars, x), out)
    return compact, compact_vars["params"]


def test_basic_block_with_empty_mask1_and_kept_mask2_stays():
    compact, params = cut_with_empty("resnet56", {"block1/masked_bn1"})
    assert compact.block_reads[1] == () and compact.block_widths[1] == (8,)
    assert "conv1" not in params["block1"] and "conv2" in params["block1"]  # BN2's bias still flows


def test_basic_first_block_with_an_identity_shortcut_reduces_to_its_bn_relu():
    compact, params = cut_with_empty("resnet56", {"block0/masked_bn2"})
    assert set(params["block0"]) == {"bn1"}  # the shortcut adds the shared BN-ReLU's output


@pytest.mark.parametrize("block", [0, 1])  # block0 is a first block (shared BN-ReLU + projection)
def test_bottleneck_with_empty_mask2_and_kept_mask3_stays(block):
    compact, params = cut_with_empty("resnet164", {f"block{block}/masked_bn2"}, fold=True)
    assert compact.block_widths[block] == (0, 4)
    assert "conv1" not in params[f"block{block}"] and "conv3" in params[f"block{block}"]


def test_densenet_with_an_empty_transition_and_an_empty_layer():
    model = tiny("densenet40")[0]
    transition, layer = model.layers_per_block, 0  # unit 2 is the transition of the tiny model
    compact, params = cut_with_empty("densenet40", {f"masked_bn{transition}", f"masked_bn{layer}"})
    assert compact.reads[transition] == () and compact.reads[layer] == ()
    assert f"conv{transition}" not in params and f"conv{layer}" not in params


@pytest.mark.parametrize(
    "unit,reads_nothing,present", [("masked_bn1", "conv2", "conv3"), ("masked_bn2", "conv3", "bn3")]
)
def test_imagenet_bottleneck_with_an_empty_inner_layer(unit, reads_nothing, present):
    # post-activation: the conv after the empty layer reads nothing, but the BN after it still adds
    # its bias, so the branch is a constant, not zero, and stays
    compact, params = cut_with_empty("resnet50", {f"block1/{unit}"}, fold=True)
    assert 0 in compact.block_widths[1]
    assert reads_nothing not in params["block1"] and present in params["block1"]


@pytest.mark.parametrize(
    "name,unit", [("resnet56", "masked_bn_final"), ("resnet164", "masked_bn_final"), ("densenet40", "masked_bn5")]
)
def test_empty_final_unit_leaves_the_head_bias(name, unit):
    compact, params = cut_with_empty(name, {unit})
    assert params["head"]["kernel"].shape[0] == 0


def test_masked_imagenet_stem_keeps_its_best_channel():
    model, variables, x = tiny("resnet50")
    assert "masked_bn_stem" in surgery.model_hard_masks(model, variables["params"])
    compact, params = cut_with_empty("resnet50", {"masked_bn_stem"})  # the plan keeps one channel
    assert compact.stem_width == 1 and params["block0"]["proj"]["kernel"].shape[2] == 1


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
