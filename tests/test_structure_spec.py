"""The structure derived from the traced computation (``structure.describe``) is the one a human
writes: the specification below lists, per built-in architecture, the arrays and axes every masked
unit governs, which units keep their last channel, the conv -> BN folds and the input conv. It is
checked for all eleven built-in models, dense and compact (channel selections, empty layers)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

from soft_prune_jax.compact import structure, surgery
from soft_prune_jax.method import masks as M
from soft_prune_jax.models import VGG, DenseNet, PreActResNet, ResNet, get_model

from conftest import TINY, tiny

S = structure.ArraySlice


def _bn(path):
    return [S("params", path + ("scale",), 0), S("params", path + ("bias",), 0)] + [
        S("batch_stats", path + ("mean",), 0),
        S("batch_stats", path + ("var",), 0),
    ]


def _out(conv):
    return S("params", conv + ("kernel",), 3)


def _in(conv):
    return S("params", conv + ("kernel",), 2)


_HEAD = S("params", ("head", "kernel"), 0)


def _group(unit, *others, keep_one=False):
    return structure.MaskGroup("/".join(unit), tuple(_bn(unit)) + tuple(others), keep_one)


def _vgg(model):
    n = len(model.conv_widths)
    groups = [
        _group((f"masked_bn{i}",), _out((f"conv{i}",)), _in((f"conv{i + 1}",)) if i + 1 < n else _HEAD, keep_one=True)
        for i in range(n)
    ]
    folds = [structure.Fold((f"conv{i}",), (f"masked_bn{i}",)) for i in range(n)]
    return groups, ("conv0", "kernel"), folds


def _preact(model):
    inner = model.block_widths or model.full_block_widths()
    firsts = [i == 0 for size in model.stage_sizes for i in range(size)]
    groups, folds = [], []
    for b, widths in enumerate(inner):
        blk = (f"block{b}",)
        convs = [blk + (f"conv{j + 1}",) for j in range(len(widths) + 1)]
        if not firsts[b]:  # a first block's BN-ReLU is shared with the shortcut: unmasked
            groups.append(_group(blk + ("masked_bn1",), _in(convs[0])))
        for j in range(len(widths)):
            groups.append(_group(blk + (f"masked_bn{j + 2}",), _out(convs[j]), _in(convs[j + 1])))
            folds.append(structure.Fold(convs[j], blk + (f"masked_bn{j + 2}",)))
    groups.append(_group(("masked_bn_final",), _HEAD))
    return groups, ("stem", "kernel"), folds


def _densenet(model):
    n = model.num_units
    groups = [_group((f"masked_bn{u}",), _in((f"conv{u}",)) if u + 1 < n else _HEAD) for u in range(n)]
    return groups, ("stem", "kernel"), []  # every BN reads a concatenation: nothing folds


def _resnet(model):
    inner = model.block_widths or model.full_block_widths()
    groups = []
    stem_bn = ("masked_bn_stem",) if model.stem_masked else ("bn_stem",)
    if model.stem_masked:  # a chain unit: the stem's outputs feed block0's conv1 and projection only
        groups.append(
            _group(stem_bn, _out(("stem",)), _in(("block0", "conv1")), _in(("block0", "proj")), keep_one=True)
        )
    folds = [structure.Fold(("stem",), stem_bn)]
    for b, widths in enumerate(inner):
        blk = (f"block{b}",)
        for j in range(len(widths)):
            unit = blk + (f"masked_bn{j + 1}",)
            groups.append(_group(unit, _out(blk + (f"conv{j + 1}",)), _in(blk + (f"conv{j + 2}",))))
            folds.append(structure.Fold(blk + (f"conv{j + 1}",), unit))
        folds += [
            structure.Fold(blk + (f"conv{len(widths) + 1}",), blk + (f"bn{len(widths) + 1}", "bn")),
            structure.Fold(blk + ("proj",), blk + ("proj_bn", "bn")),
        ]
    return groups, ("stem", "kernel"), folds


SPEC = {VGG: _vgg, PreActResNet: _preact, DenseNet: _densenet, ResNet: _resnet}

# Tiny versions of all eleven built-in models (vgg19/resnet110/34/101 share a class with a TINY one).
BUILTIN = dict(TINY)
BUILTIN.update(
    {
        "vgg19": (dict(widths=(4, "M", 6, 5)), (2, 8, 8, 3), 10),
        "resnet110": (dict(stage_sizes=(1, 2, 1), stage_widths=(4, 8, 8)), (2, 8, 8, 3), 10),
        "resnet34": (dict(stage_sizes=(1, 1, 2, 1), stage_widths=(4, 4, 8, 8)), (2, 32, 32, 3), 7),
        "resnet101": (dict(stage_sizes=(1, 1, 1, 2), stage_widths=(4, 4, 8, 8)), (2, 32, 32, 3), 7),
    }
)


def _assert_matches_spec(model):
    groups, input_kernel, folds = SPEC[type(model)](model)
    found = structure.describe(model)
    as_sets = lambda gs: {g.name: (set(g.slices), g.keep_at_least_one) for g in gs}  # noqa: E731
    assert as_sets(found.groups) == as_sets(groups)
    assert [g.name for g in found.groups] == [g.name for g in groups]  # program order
    assert found.input_kernel == input_kernel
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), train=False))
    flat = traverse_util.flatten_dict(variables["params"])
    # the spec lists a projection fold for every ResNet block; only projecting blocks have one
    assert set(found.folds) == {f for f in folds if f.conv[-1] != "proj" or f.conv + ("kernel",) in flat}
    # every masked unit of the model (a compact one may have lost whole blocks) has its group
    assert set(M.masked_layers(variables["params"])) <= {g.name for g in found.groups}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_structure_equals_the_written_spec(name):
    kwargs, _, classes = BUILTIN[name]
    _assert_matches_spec(get_model(name, classes, **kwargs))


@pytest.mark.parametrize("name", sorted(TINY))
def test_compact_models_share_the_structure_of_their_full_width_model(name):
    """Channel selections (gathers), single-channel and empty layers do not change the structure."""
    model, variables, _ = tiny(name)
    compact, _ = surgery.prune(model, surgery.randomize_bn(variables, 7, 0.9))
    _assert_matches_spec(compact)
    _assert_matches_spec(compact.clone(mask=M.MaskConfig()))


def test_a_wrong_discovery_would_fail_the_spec():
    """The comparison can fail: a spec with one slice removed no longer equals the discovery."""
    model = get_model("vgg16", 10, **TINY["vgg16"][0])
    groups, _, _ = _vgg(model)
    found = structure.describe(model).groups
    assert set(found[0].slices) != set(groups[0].slices[:-1])


def test_describe_traces_once_per_full_width_model():
    model, variables, _ = tiny("resnet56")
    structure.describe(model)
    before = structure._derived.cache_info().misses
    compact, _ = surgery.prune(model, surgery.randomize_bn(variables, 3, 0.5))
    structure.describe(compact)
    structure.describe(model.clone(mask=None))
    assert structure._derived.cache_info().misses == before


@pytest.mark.parametrize("name", ["vgg16", "resnet56", "densenet40"])
def test_groups_do_not_depend_on_the_traced_input_size(name, monkeypatch):
    model = tiny(name)[0].clone(mask=None)
    derived = structure._derived.__wrapped__  # the uncached derivation
    at_default = derived(model)
    monkeypatch.setattr(structure, "_TRACE_INPUT", (3, 8, 8, 5))
    assert derived(model) == at_default
