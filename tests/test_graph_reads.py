"""Read groups: a BN-ReLU unit that reads a shared value (the residual stream, a concatenation) prunes
only what it reads -- its BN's channels and its consumers' input channels -- through a gather of its
own, as the paper's masks on the pre-activation ResNets and DenseNet do; the shared value
stays whole for everyone else."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo_reads
from flax import nnx, traverse_util
from graph_support import _from_shapes, close
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_prune_zoo import draw_bn

from soft_prune_jax import prune_model
from soft_prune_jax.compact.prune_model import channel_groups, masked_reference
from soft_prune_jax.measure import flops
from soft_prune_jax.models import user
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import graph_cost as cost
from soft_prune_jax.traced import macs, masked

from conftest import TINY, tiny

FEW = settings(max_examples=3, deadline=None, phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])
SHAPE = (2, 6, 6, 3)


def _groups(model, variables, x):
    return {g.name: g for g in channel_groups(model, variables, x)}


def _members(grp):
    return {"/".join(m.path[1:]) + f":{m.axis}" for m in grp.members}


def _bn(name):
    return {f"{name}/{leaf}:0" for leaf in ("scale", "bias", "mean", "var")}


def _linen_case(cls, seed, fraction):
    model = cls()
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=SHAPE), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    flat, dead = draw_bn(_from_shapes(traverse_util.flatten_dict(abstract), seed), seed, fraction)
    return model, jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat)), x, dead


def test_units_reading_another_units_output_get_read_groups():
    """The stem's BN-ReLU output is the residual stream / the first piece of the concatenation: the
    units reading it are their own groups (BN + the conv they feed), the stem's group stays whole."""
    model, variables, x, _ = _linen_case(zoo_reads.StemPreAct, 0, 0.0)
    groups = _groups(model, variables, x)
    reads = {name for name, g in groups.items() if g.prunable and g.reads}
    assert reads == {"BatchNorm_1", "BatchNorm_3", "BatchNorm_5"}  # every BN that reads the stream
    assert _members(groups["BatchNorm_1"]) == _bn("BatchNorm_1") | {"Conv_1/kernel:2"}
    assert _members(groups["BatchNorm_5"]) == _bn("BatchNorm_5") | {"Dense_0/kernel:0"}
    stem = groups["BatchNorm_0"]
    assert not stem.prunable and stem.reason and "Conv_0/kernel:3" in _members(stem)
    assert {g.name for g in groups.values() if g.prunable and not g.reads} == {"BatchNorm_2", "BatchNorm_4"}

    model, variables, x, _ = _linen_case(zoo_reads.StemDenseNet, 0, 0.0)
    groups = _groups(model, variables, x)
    assert {name for name, g in groups.items() if g.prunable} == {"BatchNorm_1", "BatchNorm_2", "BatchNorm_3"}
    assert all(groups[n].reads for n in ("BatchNorm_1", "BatchNorm_2", "BatchNorm_3"))
    assert _members(groups["BatchNorm_1"]) == _bn("BatchNorm_1") | {"Conv_1/kernel:2"}
    assert groups["BatchNorm_2"].size == 7 and not groups["BatchNorm_0"].prunable


def test_a_read_that_reaches_the_stream_keeps_the_old_grouping():
    """A unit whose output is itself added to the stream cannot drop what it reads: no read group."""

    class Shortcut(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
            u = nn.relu(nn.BatchNorm(use_running_average=True)(x))
            x = x + u + nn.Conv(4, (3, 3))(u)
            return nn.Dense(2)(x.mean((1, 2)))

    model = Shortcut()
    x = jnp.ones(SHAPE)
    variables = model.init(jax.random.PRNGKey(0), x)
    groups = _groups(model, variables, x)
    assert not any(g.prunable for g in groups.values())
    (stem,) = [g for g in groups.values() if g.units]
    assert [u.name for u in stem.units] == ["BatchNorm_0", "BatchNorm_1"]


def _check_exact(model_out, compact_out, masked_out):
    close(compact_out, masked_out)
    close(compact_out, model_out)


def _dead_dropped(program, dead):
    """Every read group drops exactly its unit's dead channels (keep-one where all are dead)."""
    cut = 0
    for grp in program.analysis.groups:
        if not grp.reads or not grp.prunable:
            continue
        (unit,) = grp.units
        plan = program.plans[grp.name]
        alive = np.flatnonzero(~dead[unit.name])
        assert plan.kept.tolist() == (alive.tolist() or plan.kept.tolist()), grp.name
        cut += plan.total - len(plan.kept)
    return cut


@pytest.mark.parametrize("cls", [zoo_reads.StemPreAct, zoo_reads.StemDenseNet])
@FEW
@given(seed=st.integers(0, 2**16), fraction=st.sampled_from([0.25, 0.5]))
def test_linen_read_groups_cut_exactly(cls, seed, fraction):
    model, variables, x, dead = _linen_case(cls, seed, fraction)
    compact, compact_vars = prune_model(model, variables, x)
    assert not [p.reason for p in compact.program.plans.values() if "self-check" in p.reason]
    _check_exact(model.apply(variables, x), compact.apply(compact_vars, x), masked_reference(compact, variables, x))
    assert _dead_dropped(compact.program, dead) > 0
    # MACs: what the compact replay computes is what the counters on the plans say
    analysis = compact.program.analysis
    counted = flops.model_macs(compact, compact_vars, x)
    assert counted == macs.of_compact(compact).macs
    assert counted < macs.count(analysis).macs == flops.model_macs(model, variables, x)


@FEW
@given(seed=st.integers(0, 2**16))
def test_nnx_read_groups_cut_exactly(seed):
    module = zoo_reads.NnxStemPreAct(rngs=nnx.Rngs(0))
    state = nnx.state(module)
    paths = [tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    paths = [p[:-1] if p[-1] in ("value", ".value") else p for p in paths]
    flat, dead = draw_bn(_from_shapes(dict(zip(paths, jax.tree_util.tree_leaves(state))), seed), seed, 0.5)
    leaves = [jnp.asarray(flat[p]) for p in paths]
    nnx.update(module, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), leaves))
    module.eval()
    x = jnp.asarray(np.random.default_rng(seed).normal(size=SHAPE), jnp.float32)
    groups = {g.name: g for g in channel_groups(module, x)}
    assert {n for n, g in groups.items() if g.prunable and g.reads} == {"bn1", "final"}
    assert not groups["stem_bn"].prunable
    compact = prune_model(module, x)
    _check_exact(module(x), compact(x), masked_reference(compact, nnx.state(module), x))
    assert _dead_dropped(compact.program, dead) > 0


def test_masked_training_puts_read_masks_on_the_unit_and_evaluates_as_the_cut():
    """The masked replay (SCP training) finds the read units; its evaluation with the hard masks is
    the compact model, so what training evaluates is what the cut delivers."""
    model = user.build("zoo_reads:StemPreAct", 3, {})
    _, variables, x, _ = _linen_case(zoo_reads.StemPreAct, 5, 0.5)
    units = masked.UnitSet.analyze(model, variables, x)
    assert {"BatchNorm_1", "BatchNorm_3", "BatchNorm_5"} <= {u.name for u in units.units}
    assert {u.group for u in units.units if u.name == "BatchNorm_3"} == {"BatchNorm_3"}
    scp = masked.MaskedModel(model, units, "soft", mask=M.MaskConfig())
    compact, compact_vars = prune_model(model.module, variables, x, train=False)
    close(scp.apply(variables, x), compact.apply(compact_vars, x, train=False))
    key = jax.random.PRNGKey(0)
    logits, _ = scp.apply(variables, x, train=True, rngs={"gumbel": key}, mutable=["batch_stats"])
    assert np.all(np.isfinite(np.asarray(logits)))
    # the budget's cost model prices the read groups as the cut computes them
    model_cost = cost.cost_model(units)
    assert {"BatchNorm_1", "BatchNorm_3"} <= set(model_cost.groups)
    widths = {name: len(compact.program.plans[name].kept) for name in model_cost.groups}
    assert float(B.macs_of_widths(model_cost, widths)) == pytest.approx(flops.model_macs(compact, compact_vars, x))
    assert model_cost.dense_macs == pytest.approx(flops.model_macs(model.module, variables, x))


# ---- the same cut on a built-in network and its plain-Flax twin ------------------------------------


PLAIN = {
    "resnet56": lambda kw, classes: zoo_reads.PlainPreActResNet(num_classes=classes, **kw),
    "densenet40": lambda kw, classes: zoo_reads.PlainDenseNet(num_classes=classes, **kw),
}


@pytest.mark.parametrize("name", sorted(PLAIN))
@settings(max_examples=2, deadline=None, phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 3))
def test_plain_twin_cuts_as_the_builtin(name, seed):
    """prune_model finds the read groups from the computation, not from how a network is written: on
    the built-in network and on a plain-Flax twin written independently (same module names), with the
    same variables (dead channels in the paper's units), it keeps the same widths of every array, with
    the same MACs, and both equal the dense built-in. The shared BN-ReLUs of first blocks (``bn1``) are
    kept whole on both, as the built-in's ``keep_whole`` asks of training."""
    kwargs, _, classes = TINY[name]
    builtin, variables, x = tiny(name, seed)
    plain = PLAIN[name](kwargs, classes)
    groups = _groups(plain, variables, x)
    readers = [g for g in groups.values() if g.prunable and g.reads]
    assert readers and all(len(g.units) == 1 for g in readers)
    keep = {n: np.arange(g.size) for n, g in groups.items() if g.prunable and n.endswith("/bn1")}
    compact, compact_vars = prune_model(plain, variables, x, keep=keep)
    ours, ours_vars = prune_model(builtin, variables, x, keep=keep, train=False)
    shapes = lambda v: jax.tree.map(np.shape, dict(v["params"]))  # noqa: E731
    assert shapes(compact_vars) == shapes(ours_vars) != shapes(variables)
    assert flops.model_macs(compact, compact_vars, x) == flops.model_macs(ours, ours_vars, x, train=False)
    dense = builtin.apply(variables, x, train=False)
    close(compact.apply(compact_vars, x), dense)
    close(ours.apply(ours_vars, x, train=False), dense)
