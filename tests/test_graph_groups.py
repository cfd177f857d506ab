"""Channel groups found from the jaxpr are the ones a human writes down, for zoo networks (written
out here)."""

import jax
import numpy as np
from graph_support import linen

from soft_prune_jax.graph import analyze, trace
from soft_prune_jax.ops import fast_conv


def _analysis(model, variables, x):
    with fast_conv.flax_conv_formulation("xla"):
        return analyze(trace(lambda v, x: model.apply(v, x, train=False), variables, x), strip=1)


def _prunable(analysis):
    return {g.name: {"/".join(m.path[1:]) + f":{m.axis}" for m in g.members} for g in analysis.groups if g.prunable}


def _bn(name):
    return {f"{name}/{leaf}:0" for leaf in ("scale", "bias", "mean", "var")}


def test_post_activation_resnet_groups_as_written():
    """Flax's ImageNet ResNet: each block's inner BN-ReLU is a unit with conv0 out / conv1 in; the
    residual stream (stem BN, every last BN, projections) is kept whole."""
    a = _analysis(*linen("resnet_post"))
    groups = _prunable(a)
    assert groups == {
        f"ResNetBlock_{b}/BatchNorm_0": _bn(f"ResNetBlock_{b}/BatchNorm_0")
        | {f"ResNetBlock_{b}/Conv_0/kernel:3", f"ResNetBlock_{b}/Conv_1/kernel:2"}
        for b in (0, 1)
    }
    stream = a.group("bn_init")
    assert not stream.prunable and "residual stream" in stream.reason
    assert {"ResNetBlock_1/conv_proj/kernel", "ResNetBlock_1/norm_proj/scale"} <= {
        "/".join(m.path[1:]) for g in a.groups for m in g.members if not g.prunable
    }


def test_flatten_into_dense_maps_rows_with_a_stride():
    a = _analysis(*linen("chain"))
    grp = a.group("BatchNorm_1")
    (head,) = [m for m in grp.members if m.path[-2:] == ("Dense_0", "kernel")]
    channels = 8
    assert head.axis == 0 and np.array_equal(head.channel, np.arange(head.channel.size) % channels)
    # NCHW flatten (transpose first): the feature factor is followed, rows {c * H * W + p}
    grp = _analysis(*linen("chain_nchw")).group("BatchNorm_0")
    assert grp.prunable
    (head,) = [m for m in grp.members if m.path[-2:] == ("Dense_0", "kernel")]
    assert np.array_equal(head.channel, np.arange(6 * 9) // 9)


def test_concatenation_offsets_and_own_selections():
    """DenseNet: every unit reads its own selection of the concatenation; inception-style branches
    map to disjoint row ranges of the conv that reads their concatenation."""
    groups = _prunable(_analysis(*linen("densenet")))
    assert groups["BatchNorm_1"] == _bn("BatchNorm_1") | {"Conv_2/kernel:2"}
    a = _analysis(*linen("inception"))
    first, second = a.group("BatchNorm_0"), a.group("BatchNorm_1")
    rows = lambda g: [m for m in g.members if m.path[-2:] == ("Conv_2", "kernel")][0].channel
    assert np.array_equal(np.flatnonzero(rows(first) >= 0), np.arange(4))
    assert np.array_equal(np.flatnonzero(rows(second) >= 0), np.arange(4, 9))


def test_depthwise_ties_two_units_and_grouped_conv_stops():
    groups = _prunable(_analysis(*linen("depthwise_separable")))
    assert groups["BatchNorm_0"] == _bn("BatchNorm_0") | _bn("BatchNorm_1") | {
        "Conv_0/kernel:3",
        "Conv_1/kernel:3",
        "Conv_2/kernel:2",
    }
    a = _analysis(*linen("grouped_conv"))
    assert set(_prunable(a)) == {"BatchNorm_2"}
    assert "conv_general_dilated" in a.group("BatchNorm_1").reason


def test_squeeze_excite_gate_joins_the_gated_channels():
    groups = _prunable(_analysis(*linen("squeeze_excite")))
    assert groups["BatchNorm_0"] == _bn("BatchNorm_0") | {
        "Conv_0/kernel:3",
        "Conv_1/kernel:2",
        "se_reduce/kernel:0",
        "se_expand/kernel:1",
        "se_expand/bias:0",
    }


def test_units_from_algebra_not_class():
    """A BN followed by tanh is no unit; a hand-written BN (divide by sqrt, own names) is one."""
    assert set(_prunable(_analysis(*linen("bn_without_relu")))) == {"BatchNorm_1"}
    groups = _prunable(_analysis(*linen("own_batchnorm")))
    assert groups["MyBatchNorm_0"] == {
        "Conv_0/kernel:3",
        "Conv_0/bias:0",
        "Conv_1/kernel:2",
        "MyBatchNorm_0/gamma:0",
        "MyBatchNorm_0/beta:0",
        "MyBatchNorm_0/moving_mean:0",
        "MyBatchNorm_0/moving_var:0",
    }


def test_inverted_residual_relu6_units_and_linear_bottleneck():
    a = _analysis(*linen("inverted_residual"))
    assert set(_prunable(a)) == {"BatchNorm_1", "BatchNorm_4"}  # expansions; the stream stays whole


def test_gamma_beta_read_off_the_chain():
    from graph_support import randomize_linen

    from soft_prune_jax.compact.interpret import constant_values
    from soft_prune_jax.graph.units import gamma_beta

    model, variables, x = linen("own_batchnorm")
    variables = randomize_linen(variables, 4, 0.5)
    a = _analysis(model, variables, x)
    consts = constant_values(a, jax.tree.leaves(variables))
    (unit,) = [u for u in a.units if u.name == "MyBatchNorm_0"]
    gamma, beta = gamma_beta(unit, consts.__getitem__)
    np.testing.assert_allclose(gamma, variables["params"]["MyBatchNorm_0"]["gamma"], rtol=1e-5)
    np.testing.assert_allclose(beta, variables["params"]["MyBatchNorm_0"]["beta"], rtol=1e-5, atol=1e-6)
