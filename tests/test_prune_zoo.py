"""prune_model on zoos of user-style models (tests/zoo_user.py and tests/zoo_user_more.py, linen and
NNX), with hypothesis-drawn BN parameters of which some channels are dead (scale 0, bias -100:
exactly 0 after a ReLU).

For every model: no error from the graph code; the compact model equals the dense network with its
dropped channels zeroed (``masked_reference``); every dropped unit channel is one drawn dead, so the
compact model equals the **dense** model; no group was left whole by the self-check (the rules alone
must be right; the self-check is the net, tested on its own below); and where the model has a BN ->
ReLU unit the zoo expects to prune, something is cut. A model with no unit (GELU, SiLU, ... after its
BNs) is left whole and still equals the dense model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo_user
import zoo_user_more
from flax import nnx, traverse_util
from graph_support import _from_shapes, close
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from soft_prune_jax import prune_model
from soft_prune_jax.compact import interpret as I
from soft_prune_jax.compact import verify
from soft_prune_jax.compact.prune_model import decide, masked_reference, program_of
from soft_prune_jax.graph import rules
from soft_prune_jax.models.user import UserModel
from soft_prune_jax.scp.masks import MaskConfig
from soft_prune_jax.traced import masked

ZOO = settings(max_examples=1, deadline=None, phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])
DRAWS = dict(seed=st.integers(0, 2**16), fraction=st.sampled_from([0.25, 0.5]))
# Where the rules cannot follow the channels after the first unit, its group is left whole (with the
# reason); units after the blocking operation may still be cut.
FIRST_WHOLE = {
    "grouped_g2",
    "grouped_g4",
    "pixel_shuffle_torch",
    "slice_channels",
    "strided_channels",
    "roll_channels",
    "order_f_flatten",
    "order_f_roundtrip",
    "layer_norm",
    "softmax_channels",
    "jax_vmap_conv",
    "vmap_conv_ensemble",
    "scan_blocks",
    "split_swap_concat",
    "nnx_grouped_g2",
}
# Where several unit channels reach one group channel, a channel goes only when all are dead: with
# random dead channels a draw may cut nothing (the exactness checks still hold).
MAY_KEEP_ALL = {
    "depthwise_m2",
    "depthwise_m3",
    "shuffle_g2",
    "shuffle_g4",
    "shufflenet_unit",
    "pixel_shuffle_tf",
    "split_add",
    "split3_add",
    "repeat_channels",
    "tile_channels",
    "se_on_depthwise",
    "nnx_depthwise_m2",
    "nnx_shuffle",
    "nnx_split_add",
    "nnx_repeat",
    "nnx_pixel_shuffle_tf",
    "shared_conv_twice",
}


def _bn_modules(flat: dict) -> dict:
    """{module path: (scale key or None, bias key or None, mean key, var key)} of every BN leaf set."""
    out = {}
    for key in flat:
        if key[-1] != "mean":
            continue
        module = key[1:-1] if key[0] == "batch_stats" else key[:-1]
        params = ("params",) + module if key[0] == "batch_stats" else module
        scale, bias = params + ("scale",), params + ("bias",)
        out[module] = (scale if scale in flat else None, bias if bias in flat else None, key, key[:-1] + ("var",))
    return out


def draw_bn(flat: dict, seed: int, fraction: float) -> tuple[dict, dict]:
    """(flat with random BN statistics, {unit name: dead channels}): a ``fraction`` of each BN's
    channels (at least one, never all) get scale 0 and bias -100, the rest scale and bias in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    flat, dead = dict(flat), {}
    for module, (scale, bias, mean, var) in _bn_modules(flat).items():
        shape = np.shape(flat[mean])
        n = shape[-1]
        d = rng.random(shape) < fraction
        d[..., rng.integers(n)] = True
        d[..., (rng.integers(n - 1) + 1) % n if n > 1 else 0] = n == 1
        flat[mean] = rng.normal(0.0, 0.3, shape).astype(np.float32)
        flat[var] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        if scale is not None:
            flat[scale] = np.where(d, 0.0, rng.uniform(0.5, 1.5, shape)).astype(np.float32)
        if bias is not None:
            flat[bias] = np.where(d, -100.0, rng.uniform(0.5, 1.5, shape)).astype(np.float32)
        if scale is not None or bias is not None:
            dead["/".join(module)] = d
    return flat, dead


LINEN_MODELS = {
    **{name: (zoo_user.Body(body), args, {}) for name, (body, args, _) in zoo_user.LINEN.items()},
    **{name: (zoo_user.Body(body), args, {}) for name, (body, args, _) in zoo_user_more.LINEN.items()},
    **{name: (model, args, {}) for name, (model, args, _) in zoo_user_more.LINEN_MODULES.items()},
}
for _name, _kwargs in zoo_user_more.KWARGS.items():
    LINEN_MODELS[_name] = LINEN_MODELS[_name][:2] + (_kwargs,)
NNX_MODELS = {**zoo_user.NNX, **zoo_user_more.NNX}
FIRST_ZOO = set(zoo_user.LINEN) | set(zoo_user.NNX)  # zoo_user_more pins its groups instead (PRUNABLE)
assert len(LINEN_MODELS) == len(zoo_user.LINEN) + len(zoo_user_more.LINEN) + len(zoo_user_more.LINEN_MODULES)
assert len(NNX_MODELS) == len(zoo_user.NNX) + len(zoo_user_more.NNX)


def linen_case(name: str, seed: int, fraction: float):
    """(model, variables, x, call args, call kwargs, dead channels per unit)."""
    model, args, kwargs = LINEN_MODELS[name]
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=zoo_user.SHAPE), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, *args, **kwargs))
    flat, dead = draw_bn(_from_shapes(traverse_util.flatten_dict(abstract), seed), seed, fraction)
    return model, jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat)), x, args, kwargs, dead


def nnx_case(name: str, seed: int, fraction: float):
    ctor, args, _ = NNX_MODELS[name]
    # built abstractly: every array is drawn below, and an eager init compiles each initializer
    module = nnx.eval_shape(lambda: ctor(nnx.Rngs(0)))
    state = nnx.state(module)
    paths = [tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    paths = [p[:-1] if p[-1] in ("value", ".value") else p for p in paths]
    named = dict(zip(paths, jax.tree_util.tree_leaves(state)))
    flat, dead = draw_bn(_from_shapes(named, seed), seed, fraction)
    leaves = [jnp.asarray(flat[p]) for p in paths]
    nnx.update(module, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), leaves))
    module.eval()
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=zoo_user.SHAPE), jnp.float32)
    args = tuple(nnx.Rngs(0) if a == "rngs" else a for a in args)
    return module, x, args, dead


def check_whole_and_prunable(name, program):
    """zoo_user_more's expectations: the groups of ``WHOLE``'s units are left whole with the reason
    named, those of ``PRUNABLE``'s units are prunable (whatever the draw cuts)."""
    analysis = program.analysis
    for unit, word in zoo_user_more.WHOLE.get(name, {}).items():
        groups = [g for g in analysis.groups if any(u.name == unit for u in g.units)]
        assert groups, (name, unit, "no such unit")
        for g in groups:
            plan = program.plans[g.name]
            assert len(plan.kept) == plan.total and word in plan.reason, (name, unit, plan)
    for unit in zoo_user_more.PRUNABLE.get(name, ()):
        groups = [g for g in analysis.groups if any(u.name == unit for u in g.units)]
        assert len(groups) == 1 and program.plans[groups[0].name].prunable, (name, unit, [g.reason for g in groups])


def check_dead_dropped(name, program, dead):
    """A prunable group of one unit, channel for channel, loses exactly its dead channels (all but
    the most alive one if every channel is dead)."""
    analysis = program.analysis
    for g in analysis.groups:
        labels = [analysis.slot_labels(u.out, u.axis) for u in g.units]
        if not g.prunable or len(g.units) != 1 or list(labels[0]) != list(g.labels) or g.units[0].name not in dead:
            continue
        dropped, d = ~program.alive[g.labels], dead[g.units[0].name].reshape(-1)
        assert np.array_equal(dropped, d) or (d.all() and dropped.sum() == d.size - 1), (name, g.name, dropped, d)


def check_cut(name, program, compact_out, masked_out, dense_out, dead):
    check_whole_and_prunable(name, program)
    check_dead_dropped(name, program, dead)
    analysis, alive = program.analysis, program.alive
    for p in program.plans.values():
        assert not p.reason.startswith("self-check"), (name, p.name, p.reason)
    for leaf_c, leaf_m, leaf_d in zip(*(jax.tree.leaves(t) for t in (compact_out, masked_out, dense_out))):
        close(leaf_c, leaf_m)
        close(leaf_c, leaf_d)
    for u in analysis.units:
        dropped = ~alive[analysis.slot_labels(u.out, u.axis)]
        assert not dropped.any() or np.all(dead[u.name][dropped]), (name, u.name, "an alive channel was dropped")
    cut = [p.name for p in program.plans.values() if len(p.kept) < p.total]
    if name in FIRST_WHOLE:
        first = next(g for g in analysis.groups if any(u.name == analysis.units[0].name for u in g.units))
        plan = program.plans[first.name]
        assert len(plan.kept) == plan.total and plan.reason, (name, plan)
    elif name in FIRST_ZOO - MAY_KEEP_ALL and any(u.name in dead for u in analysis.units):
        assert cut, (name, {p.name: p.reason for p in program.plans.values()})


@pytest.mark.parametrize("name", sorted(LINEN_MODELS))
@ZOO
@given(**DRAWS)
def test_linen_zoo_compact_equals_dense_where_dropped_channels_are_dead(name, seed, fraction):
    model, variables, x, args, kwargs, dead = linen_case(name, seed, fraction)
    compact, compact_vars = prune_model(model, variables, x, *args, **kwargs)
    out = compact.apply(compact_vars, x, *args, **kwargs)
    reference = masked_reference(compact, variables, x, *args, **kwargs)
    check_cut(name, program_of(compact), out, reference, model.apply(variables, x, *args, **kwargs), dead)


@pytest.mark.parametrize("name", sorted(NNX_MODELS))
@ZOO
@given(**DRAWS)
def test_nnx_zoo_compact_equals_dense_where_dropped_channels_are_dead(name, seed, fraction):
    module, x, args, dead = nnx_case(name, seed, fraction)
    compact = prune_model(module, x, *args)
    reference = masked_reference(compact, nnx.state(module), x, *args)
    check_cut(name, program_of(compact), compact(x, *args), reference, module(x, *args), dead)


def test_flax_mnist_cnn_with_rngs_prunes_exactly():
    module, x, (rngs,), dead = nnx_case("nnx_mnist_rngs", 3, 0.5)
    compact = prune_model(module, x, nnx.Rngs(0))
    assert {p.name for p in program_of(compact).plans.values() if len(p.kept) < p.total} == {
        "batch_norm1",
        "batch_norm2",
    }
    close(compact(x, nnx.Rngs(5)), module(x, rngs))
    close(compact(x[:1], nnx.Rngs(5)), module(x[:1], rngs))  # another batch size retraces


def test_split_halves_added_drop_only_the_dead_channel():
    """The issue's smallest case: only channel 2 is dead, channel 0 (its partner in a + b) stays."""
    model, variables, x, *_ = linen_case("split_add", 0, 0.0)
    bn = variables["params"]["BatchNorm_0"]
    n = bn["scale"].shape[0]
    variables["params"]["BatchNorm_0"] = {
        "scale": jnp.ones(n).at[2].set(0.1),
        "bias": jnp.full(n, 0.5).at[2].set(-10.0),
    }
    compact, compact_vars = prune_model(model, variables, x)
    assert compact_vars["params"]["Conv_0"]["kernel"].shape[-1] == n  # partner 2 + n/2 is alive
    close(compact.apply(compact_vars, x), model.apply(variables, x))


def _reversed_concat(e, L):
    """A wrong index map with the right shapes: operands placed at each other's offsets."""
    d, out = e.params["dimension"], e.outs[0]
    operands = rules._operands(e, L)
    sizes = [L.shape(s)[d] for _, s in operands]
    offset = sum(sizes)
    for (_, s), n in zip(operands, sizes):
        offset -= n
        for ax in range(len(L.shape(s))):
            if ax == d:
                L.link(s, ax, out, ax, np.arange(n), offset + np.arange(n))
            else:
                L.link(s, ax, out, ax)


@pytest.mark.parametrize("compile_from", [verify.COMPILE_FROM_EQUATIONS, 0], ids=["op_by_op", "compiled"])
def test_self_check_leaves_a_wrongly_mapped_group_whole(monkeypatch, compile_from):
    """Both replays of the check (op by op for small graphs, one cheaply compiled program for large)."""
    monkeypatch.setitem(rules.RULES, "concatenate", _reversed_concat)
    monkeypatch.setattr(verify, "COMPILE_FROM_EQUATIONS", compile_from)
    model, variables, x, *_ = linen_case("split_branches", 4, 0.5)
    compact, compact_vars = prune_model(model, variables, x)
    reasons = [p.reason for p in program_of(compact).plans.values() if p.reason.startswith("self-check")]
    assert reasons and "differs from the dense model" in reasons[0]
    close(compact.apply(compact_vars, x), model.apply(variables, x))
    unchecked, unchecked_vars = prune_model(model, variables, x, check=False)
    with pytest.raises(AssertionError):
        close(unchecked.apply(unchecked_vars, x), model.apply(variables, x))


def test_self_check_refuses_a_cut_that_drops_what_a_unit_keeps():
    model, variables, x, *_ = linen_case("depthwise_m2", 1, 0.5)
    compact, _ = prune_model(model, variables, x, check=False)
    program = program_of(compact)
    leaves = jax.tree_util.tree_leaves(variables)
    consts = I.constant_values(program.analysis, leaves)
    plans = decide(program.analysis, consts)
    name = "BatchNorm_0"
    forged = dict(plans)
    forged[name] = type(plans[name])(name, plans[name].kept[1:], plans[name].total, 0, True, "")  # drops a live one
    checked = verify.check_plans(program.analysis, leaves, consts, forged, [x], MaskConfig())
    assert not checked[name].prunable and "mask keeps" in checked[name].reason


@pytest.mark.parametrize("name", sorted(zoo_user_more.LINEN))
def test_scp_training_masks_the_units_the_cut_prunes(name):
    """SCP training of a user model (``traced.masked``) puts masks on exactly the units of the groups
    the cut may prune, and its group keep masks (a channel stays if any unit keeps it) are the
    cut's, before keep-one: a unit whose channels the graph splits over several groups included."""
    model, variables, x, _, _, _ = linen_case(name, 0, 0.4)
    user = UserModel(name, "linen", lambda _: model, model, flag=None)
    units = masked.UnitSet.analyze(user, variables, x)
    program = program_of(prune_model(model, variables, x, check=False)[0])  # the zoo tests run the check
    prunable = {g.name for g in program.analysis.groups if g.prunable}
    assert {u.group for u in units.units} == prunable
    hard = masked.MaskedModel(user, units).masks(variables["params"])
    keep = units.group_keep({u.name: m for u, m in zip(units.units, hard)})
    for group, mask in keep.items():
        kept = program.plans[group].kept
        assert set(np.flatnonzero(mask)) == set(kept) or (not mask.any() and len(kept) == 1), (group, mask, kept)
