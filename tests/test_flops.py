"""The MAC/parameter count every phase reports (``traced.macs.count`` off the traced graph, as a
``flops.FlopCount``) and ``flops.reduction``: hand arithmetic, full-size models, XLA cross-check."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from soft_prune_jax import prune_model
from soft_prune_jax.graph import groups as G
from soft_prune_jax.graph import ir
from soft_prune_jax.measure import flops
from soft_prune_jax.models import get_model
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import macs

from conftest import normal

TINY_VGG = (4, "M", 6)


def shapes_of(model, input_shape, batch=1, **kwargs):
    x = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kwargs), x)


def count_of(model, input_shape, batch=1, **kwargs):
    """The graph's count of ``model`` on abstract inputs (no compute), traced as every phase traces it:
    each conv one ``conv_general_dilated`` equation."""
    x = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
    variables = shapes_of(model, input_shape, batch, **kwargs)
    with fast_conv.flax_conv_formulation("xla"):
        g = ir.trace(lambda v, x: model.apply(v, x, **kwargs), dict(variables), x)
    return macs.count(G.analyze(g, strip=1))


def builtin_count(name, num_classes, input_shape, **kwargs):
    return count_of(get_model(name, num_classes, **kwargs), input_shape, train=False)


def test_tiny_vgg_by_hand():
    count = builtin_count("vgg16", 10, (8, 8, 3), widths=TINY_VGG)
    conv0 = 8 * 8 * 3 * 3 * 3 * 4  # H_out W_out kh kw C_in C_out
    conv1 = 4 * 4 * 3 * 3 * 4 * 6  # after the 2x2 max-pool
    head = 6 * 10
    assert [
        (r.path, r.kind, r.in_channels, r.out_channels, r.kernel_size, r.output_spatial, r.macs, r.params)
        for r in count.layers
    ] == [
        ("conv0", "conv", 3, 4, (3, 3), (8, 8), conv0, 3 * 3 * 3 * 4),
        ("conv1", "conv", 4, 6, (3, 3), (4, 4), conv1, 3 * 3 * 4 * 6),
        ("head", "dense", 6, 10, (), (), head, 6 * 10 + 10),
    ]
    assert count.macs == conv0 + conv1 + head
    assert count.flops == 2 * count.macs
    bn = 2 * 4 + 2 * 6
    assert count.params == count.layer_params + bn == 108 + 216 + 70 + bn
    assert dict(count.masked_channels) == {"masked_bn0": 4, "masked_bn1": 6}
    assert count.input_shape == (8, 8, 3)


class Shapes(nn.Module):
    """Strides, VALID padding, feature groups, a conv bias and a dense layer over extra positions."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), strides=2, padding="SAME", use_bias=False, name="strided")(x)  # 13 -> 7
        x = nn.Conv(8, (3, 1), padding="VALID", use_bias=True, name="valid")(x)  # 7x7 -> 5x7
        x = nn.Conv(12, (3, 3), padding="VALID", feature_group_count=4, use_bias=False, name="grouped")(x)
        return nn.Dense(5, name="per_position")(x)  # (N, 3, 5, 12) -> (N, 3, 5, 5)


def test_layer_formulas_for_strides_padding_groups_and_positions():
    rows = count_of(Shapes(), (13, 13, 3)).by_path()
    assert rows["strided"].output_spatial == (7, 7)
    assert rows["strided"].macs == 7 * 7 * 9 * 3 * 8
    assert rows["valid"].macs == 5 * 7 * 3 * 8 * 8 and rows["valid"].params == 3 * 8 * 8 + 8
    assert rows["grouped"].macs == 3 * 5 * 9 * (8 // 4) * 12  # each output reads C_in / groups inputs
    assert rows["per_position"].macs == 3 * 5 * 12 * 5
    assert rows["per_position"].output_spatial == (3, 5)  # a dense layer over extra positions names them


def test_drop_in_conv_modules_count_like_nn_conv():
    class Pair(nn.Module):
        cls: type

        @nn.compact
        def __call__(self, x):
            x = self.cls(6, (3, 3), strides=2, use_bias=True, name="a")(x)
            return self.cls(4, (1, 1), use_bias=False, name="b")(x)

    ours, flax_conv = count_of(Pair(fast_conv.Conv), (9, 9, 2)), count_of(Pair(nn.Conv), (9, 9, 2))
    assert [r.macs for r in ours.layers] == [r.macs for r in flax_conv.layers] == [5 * 5 * 9 * 2 * 6, 25 * 6 * 4]
    assert ours == flax_conv


def test_counts_are_per_example():
    kwargs = dict(widths=TINY_VGG)
    assert builtin_count("vgg16", 10, (8, 8, 3), **kwargs) == count_of(
        get_model("vgg16", 10, **kwargs), (8, 8, 3), batch=4, train=False
    )


@pytest.mark.parametrize(
    "name,num_classes,shape,expected_macs",
    [
        ("resnet56", 10, (32, 32, 3), 125e6),
        ("resnet50", 1000, (224, 224, 3), 4.1e9),
        ("vgg16", 10, (32, 32, 3), 313e6),
    ],
)
def test_full_size_macs(name, num_classes, shape, expected_macs):
    count = builtin_count(name, num_classes, shape)
    assert count.macs == pytest.approx(expected_macs, rel=0.02)
    leaves = jax.tree_util.tree_leaves(shapes_of(get_model(name, num_classes), shape, train=False)["params"])
    assert count.params == sum(math.prod(leaf.shape) for leaf in leaves)
    assert count.macs == sum(row.macs for row in count.layers)


def test_resnet56_macs_by_hand_and_rows_in_execution_order():
    # stem, stage 1 (18 convs 16 -> 16 at 32x32, no projection), stages 2 and 3 (a stride-2 conv1,
    # a 1x1 projection, 17 convs at the stage's width), head
    stage1 = 18 * 32 * 32 * 9 * 16 * 16
    stage2 = 16 * 16 * 9 * 16 * 32 + 16 * 16 * 16 * 32 + 17 * 16 * 16 * 9 * 32 * 32
    stage3 = 8 * 8 * 9 * 32 * 64 + 8 * 8 * 32 * 64 + 17 * 8 * 8 * 9 * 64 * 64
    count = builtin_count("resnet56", 10, (32, 32, 3))
    assert count.macs == 32 * 32 * 27 * 16 + stage1 + stage2 + stage3 + 64 * 10
    paths = [row.path for row in count.layers]
    # stage 1's first block adds its shared BN-ReLU's output (16 -> 16, stride 1): no projection
    assert paths[:4] == ["stem", "block0/conv1", "block0/conv2", "block1/conv1"]
    assert paths[-1] == "head" and len(paths) == 1 + 27 * 2 + 2 + 1
    assert sorted(p for p in paths if p.endswith("proj")) == ["block18/proj", "block9/proj"]


def xla_flops(model, variables, x, **kwargs):
    cost = jax.jit(lambda v, x: model.apply(v, x, **kwargs)).lower(variables, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returned a list
    return float(cost["flops"])


def test_matches_xla_cost_analysis_without_padding():
    # VALID/1x1/grouped convs and bias-free dense layers: XLA counts 2 flops per MAC, nothing else.
    class Unpadded(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(8, (3, 3), padding="VALID", use_bias=False)(x)
            x = nn.Conv(16, (1, 1), strides=2, use_bias=False)(x)
            x = nn.Conv(16, (3, 3), padding="VALID", feature_group_count=4, use_bias=False)(x)
            return nn.Dense(10, use_bias=False)(x.reshape(x.shape[0], -1))

    model, batch = Unpadded(), 4
    x = jax.ShapeDtypeStruct((batch, 12, 12, 3), jnp.float32)
    count = count_of(model, (12, 12, 3))
    assert xla_flops(model, shapes_of(model, (12, 12, 3), batch), x) == batch * count.flops


def test_close_to_xla_cost_analysis_with_same_padding():
    # With SAME padding XLA skips the taps that fall on the zero border (our count, like the papers',
    # includes them) and adds BN/ReLU/pool flops; so XLA lies between the in-bounds MACs and ours.
    model, batch = get_model("vgg16", 10, widths=(8, "M", 16, 16), conv=nn.Conv), 4
    x = jax.ShapeDtypeStruct((batch, 16, 16, 3), jnp.float32)
    count = count_of(model, (16, 16, 3), train=False)
    in_bounds_taps = {16: (3 * 16 - 2) ** 2, 8: (3 * 8 - 2) ** 2}  # sum over outputs of in-image 3x3 taps
    in_bounds_macs = in_bounds_taps[16] * 3 * 8 + in_bounds_taps[8] * 8 * 16 + in_bounds_taps[8] * 16 * 16 + 16 * 10
    xla = xla_flops(model, shapes_of(model, (16, 16, 3), batch, train=False), x, train=False)
    assert 2 * batch * in_bounds_macs <= xla <= batch * count.flops
    assert xla == pytest.approx(batch * count.flops, rel=0.15)


def test_dict_round_trip_through_json():
    count = builtin_count("densenet40", 10, (16, 16, 3), layers_per_block=2, growth_rate=4)
    assert flops.FlopCount.from_dict(json.loads(json.dumps(count.to_dict()))) == count


# ----------------------------------------------------------------------------------------------
# reduction
# ----------------------------------------------------------------------------------------------


def _vgg_with_dead_channels():
    """A tiny VGG whose masked BNs drop channels through their parameters: 5 of 8, then 6 of 16."""
    model = get_model("vgg16", 10, widths=(8, "M", 16), norm=nn.BatchNorm)
    x = normal(0, (2, 8, 8, 3))
    variables = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(1), x, train=False))
    flat = traverse_util.flatten_dict(variables)
    flat[("params", "masked_bn0", "bias")] = np.array([-5.0] * 5 + [1.0] * 3, np.float32)
    flat[("params", "masked_bn1", "bias")] = np.array([-5.0] * 6 + [1.0] * 10, np.float32)
    return model, traverse_util.unflatten_dict(flat), x


def test_reduction_of_a_cut_vgg_by_hand_and_agrees_with_the_hard_masks():
    model, variables, x = _vgg_with_dead_channels()
    compact, _ = prune_model(model, variables, x, train=False)
    dense, cut = macs.count(compact.program.analysis), macs.of_compact(compact)
    r = flops.reduction(dense, cut)
    dense_macs = 64 * 27 * 8 + 16 * 9 * 8 * 16 + 16 * 10
    compact_macs = 64 * 27 * 3 + 16 * 9 * 3 * 10 + 10 * 10
    assert (r["dense_macs"], r["compact_macs"]) == (dense_macs, compact_macs)
    assert r["macs_reduction_pct"] == pytest.approx(100 * (1 - compact_macs / dense_macs))
    assert cut.params < dense.params
    assert r["params_reduction_pct"] == pytest.approx(100 * (1 - cut.params / dense.params))
    kept = M.kept_channels(M.hard_masks(variables["params"]))
    assert kept["per_layer"] == {"masked_bn0": (3, 8), "masked_bn1": (10, 16)}
    assert (r["kept_channels"], r["total_channels"]) == (kept["kept"], kept["total"]) == (13, 24)
    assert r["channel_reduction_pct"] == pytest.approx(100 * (1 - 13 / 24))


def test_reduction_rejects_mismatched_counts():
    vgg = builtin_count("vgg16", 10, (8, 8, 3), widths=TINY_VGG)
    with pytest.raises(ValueError, match="different inputs"):
        flops.reduction(vgg, builtin_count("vgg16", 10, (16, 16, 3), widths=TINY_VGG))
    other = builtin_count("resnet56", 10, (8, 8, 3), stage_sizes=(1, 1, 1))
    with pytest.raises(ValueError, match="channel groups the dense one lacks"):
        flops.reduction(vgg, other)
