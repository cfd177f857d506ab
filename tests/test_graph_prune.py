"""prune_model is exact on every zoo network (linen and NNX): compact == hard-masked dense network,
== the dense network where the dropped channels are dead; and it is really smaller."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo_linen
import zoo_nnx
from flax import nnx, traverse_util
from graph_support import close, linen, nnx_module, param_count, random_linen_variables, randomize_linen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soft_prune_jax import prune_model
from soft_prune_jax.compact.prune_model import PruneError, channel_groups, masked_reference, program_of
from soft_prune_jax.measure import flops

from conftest import normal, tiny

PROPERTY = settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# One of each kind of coupling for the (slower) property test; every network runs the exactness test.
PROPERTY_NETS = ["densenet", "depthwise_separable", "resnet_pre", "squeeze_excite"]


def _jit_apply(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@pytest.mark.parametrize("name", sorted(zoo_linen.ZOO))
def test_linen_compact_equals_dense_with_dead_channels(name):
    model, variables, x = linen(name)
    variables = randomize_linen(variables, 0, 0.5)
    compact, compact_vars = prune_model(model, variables, x, train=False)
    y = _jit_apply(compact)(compact_vars, x)
    close(y, _jit_apply(model)(variables, x))
    close(y, jax.jit(lambda v, x: masked_reference(compact, v, x))(variables, x))
    assert param_count(compact_vars) < param_count(variables)


@pytest.mark.parametrize("name", ["chain", "densenet"])
def test_another_batch_size_retraces_with_the_same_decisions(name):
    model, variables, x = linen(name)
    variables = randomize_linen(variables, 0, 0.5)
    compact, compact_vars = prune_model(model, variables, x, train=False)
    x5 = normal(7, (5,) + x.shape[1:])
    close(_jit_apply(compact)(compact_vars, x5), _jit_apply(model)(variables, x5))


@pytest.mark.parametrize("name", PROPERTY_NETS)
@PROPERTY
@given(data=st.data())
def test_linen_compact_equals_hard_masked_under_random_masks(name, data):
    """Random BN parameters (live channels only) and random keep masks for every prunable group."""
    model, variables, x = linen(name)
    variables = randomize_linen(variables, data.draw(st.integers(0, 10_000)), 0.0)
    probe, _ = prune_model(model, variables, x, train=False)
    keep = {}
    for grp in program_of(probe).analysis.groups:
        if grp.prunable:
            keep[grp.name] = np.asarray(data.draw(st.lists(st.booleans(), min_size=grp.size, max_size=grp.size)))
    round_to = data.draw(st.sampled_from([1, 1, 2]))
    compact, compact_vars = prune_model(model, variables, x, keep=keep, round_to=round_to, train=False)
    close(_jit_apply(compact)(compact_vars, x), jax.jit(lambda v, x: masked_reference(compact, v, x))(variables, x))
    for name_, p in program_of(compact).plans.items():
        if p.prunable and len(p.kept) < p.total:
            assert len(p.kept) % round_to == 0
        if name_ in keep and keep[name_].any() and round_to == 1:
            assert np.array_equal(p.kept, np.flatnonzero(keep[name_]))


@pytest.mark.parametrize("name", sorted(zoo_nnx.ZOO))
def test_nnx_compact_module_equals_dense_with_dead_channels(name):
    module, x = nnx_module(name)
    compact = prune_model(module, x)
    assert isinstance(compact, nnx.Module)
    y = nnx.jit(lambda m, x: m(x))(compact, x)
    close(y, nnx.jit(lambda m, x: m(x))(module, x))
    dense_params = param_count(nnx.state(module, nnx.Param))
    assert param_count(nnx.state(compact, nnx.Param)) < dense_params
    close(nnx.jit(lambda m, x: m(x))(compact, x[:1]), nnx.jit(lambda m, x: m(x))(module, x[:1]))


def test_nnx_random_keep_equals_masked_reference():
    module, x = nnx_module("mobilenet", seed=3, fraction=0.0)
    probe = prune_model(module, x)
    keep = {g.name: np.arange(g.size) % 2 == 0 for g in program_of(probe).analysis.groups if g.prunable}
    compact = prune_model(module, x, keep=keep)
    close(compact(x), masked_reference(compact, nnx.state(module), x))


def test_compact_model_has_fewer_xla_flops():
    model, variables, x = linen("resnet_bottleneck")
    variables = randomize_linen(variables, 1, 0.6)
    compact, compact_vars = prune_model(model, variables, x, train=False)

    def flops(f, *args):
        return jax.jit(f).lower(*args).compile().cost_analysis()["flops"]

    dense = flops(lambda v, x: model.apply(v, x, train=False), variables, x)
    small = flops(lambda v, x: compact.apply(v, x, train=False), compact_vars, x)
    assert small < 0.9 * dense


def test_groups_never_go_empty_and_stay_exact():
    model, variables, x = linen("chain")
    variables = randomize_linen(variables, 2, 1.0)  # every unit channel dead
    compact, compact_vars = prune_model(model, variables, x, train=False)
    assert compact_vars["params"]["Conv_0"]["kernel"].shape[-1] == 1
    close(compact.apply(compact_vars, x, train=False), model.apply(variables, x, train=False))


def test_bad_arguments_are_one_line_errors():
    model, variables, x = linen("resnet_post")
    with pytest.raises(PruneError, match="unknown groups"):
        prune_model(model, variables, x, keep={"nope": [0]}, train=False)
    with pytest.raises(PruneError, match="cannot lose channels"):
        prune_model(model, variables, x, keep={"bn_init": [0]}, train=False)
    with pytest.raises(PruneError, match="round_to"):
        prune_model(model, variables, x, round_to=0, train=False)
    with pytest.raises(PruneError, match="indices outside"):
        prune_model(model, variables, x, keep={"ResNetBlock_0/BatchNorm_0": [99]}, train=False)
    with pytest.raises(TypeError, match="linen Module or a flax.nnx Module"):
        prune_model(lambda x: x, variables, x)
    with pytest.raises(TypeError, match="compact_model.apply"):
        compact, _ = prune_model(model, variables, x, train=False)
        compact(x)


def test_unknown_primitive_leaves_its_group_whole():
    class Sorted(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
            x = jnp.cumsum(x, axis=-1)  # mixes channels: an unfollowable axis
            return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))

    model = Sorted()
    x = jnp.ones((1, 4, 4, 2))
    variables = random_linen_variables(model, x, 0, 0.5)
    compact, compact_vars = prune_model(model, variables, x)
    grp = program_of(compact).analysis.group("BatchNorm_0")
    assert not grp.prunable and "cumsum" in grp.reason
    close(compact.apply(compact_vars, x), model.apply(variables, x))


def test_nested_calls_are_followed():
    """Blocks under nn.remat, a jitted helper and a custom_vjp activation are inlined and pruned."""

    @jax.custom_vjp
    def my_relu(x):
        return jnp.maximum(x, 0.0)

    my_relu.defvjp(lambda x: (my_relu(x), x), lambda x, g: (g * (x > 0),))

    @jax.jit
    def normalize(x, mean, var, scale, bias):
        return (x - mean) * (scale * jax.lax.rsqrt(var + 1e-5)) + bias

    class Unit(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x):
            x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
            c = self.features
            stats = [
                self.variable("batch_stats", n, f, (c,)).value for n, f in (("mean", jnp.zeros), ("var", jnp.ones))
            ]
            scale, bias = (
                self.param("scale", nn.initializers.ones, (c,)),
                self.param("bias", nn.initializers.zeros, (c,)),
            )
            return my_relu(normalize(x, *stats, scale, bias))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.remat(Unit)(5)(x)
            x = Unit(6)(x)
            return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))

    model = Net()
    x = normal(0, (2, 5, 5, 2))
    variables = random_linen_variables(model, x, 5, 0.5)
    compact, compact_vars = prune_model(model, variables, x)
    assert {g.name for g in program_of(compact).analysis.groups if g.prunable} == {"CheckpointUnit_0", "Unit_0"}
    assert param_count(compact_vars) < param_count(variables)
    close(compact.apply(compact_vars, x), model.apply(variables, x))


def test_broadcast_sum_of_two_unit_outputs_is_left_whole():
    """a_i + b_j is zero only where both are: zero along neither axis alone, so neither group goes."""

    class Bilinear(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = jnp.mean(nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(3, (3, 3))(x))), axis=(1, 2))
            b = jnp.mean(nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x))), axis=(1, 2))
            outer = a[:, :, None] + b[:, None, :]
            return nn.Dense(2)(outer.reshape((x.shape[0], -1)))

    model = Bilinear()
    x = normal(0, (2, 4, 4, 2))
    variables = random_linen_variables(model, x, 1, 0.5)
    compact, compact_vars = prune_model(model, variables, x)
    for grp in program_of(compact).analysis.groups:
        assert not grp.prunable
    close(compact.apply(compact_vars, x), model.apply(variables, x))


def test_channel_groups_names_what_keep_accepts():
    model, variables, x = linen("chain")
    groups = {g.name: g for g in channel_groups(model, variables, x, train=False)}
    assert groups["BatchNorm_0"].prunable and groups["BatchNorm_0"].size == 6
    compact, compact_vars = prune_model(model, variables, x, keep={"BatchNorm_0": [1, 4]}, train=False)
    assert compact_vars["params"]["Conv_0"]["kernel"].shape[-1] == 2
    module, x = nnx_module("cnn")
    assert {g.name for g in channel_groups(module, x) if g.prunable} == {"bn1", "bn2"}


@pytest.mark.parametrize("name", ["vgg16", "densenet40", "resnet18"])
def test_builtin_model_cut_keeps_exactly_its_live_paper_units(name):
    """On a built-in architecture the default decisions are the SCP hard masks of its paper units
    (``masked_bn*``): each is a group of its own that keeps exactly its live channels (``tiny`` kills
    the others: scale 0, bias -100), so the compact model equals the dense one and costs fewer MACs."""
    model, variables, x = tiny(name, 11, 0.6)
    compact, compact_vars = prune_model(model, variables, x, train=False)
    close(_jit_apply(compact)(compact_vars, x), _jit_apply(model)(variables, x))
    plans = program_of(compact).plans
    live = {
        "/".join(k[1:-1]): np.flatnonzero(np.asarray(v))
        for k, v in traverse_util.flatten_dict(variables).items()
        if k[0] == "params" and k[-2].startswith("masked_bn") and k[-1] == "scale"
    }
    assert live and {n: list(plans[n].kept) for n in live} == {n: list(k) for n, k in live.items()}
    assert flops_of(compact, compact_vars, x) < flops_of(model, variables, x)


def flops_of(model, variables, x):
    return flops.model_macs(model, variables, x, train=False)
