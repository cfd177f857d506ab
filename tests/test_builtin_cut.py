"""The built-in architectures on the one traced path: ``models.user.build(name, ...)`` wraps them as it
wraps a user's model, ``traced.masked`` finds their units and ``compact.prune_model`` cuts them.

- the traced analysis finds units exactly where the paper puts masks (docs/method.md, "Where the
  masks sit": the ``masked_bn*`` BNs), each the only unit of its group, and each group holds exactly
  the arrays that unit's mask governs; the pre-activation ResNets' shared BN-ReLU of a projecting
  first block is left whole (``PreActResNet.keep_whole``), as the paper has no mask there;
- SCP's masks inserted by the replay (``MaskedModel``) evaluate as the hard masks applied by hand;
- the cut is exact: on random keep masks it equals the hard-masked network (``masked_reference``);
  where the dropped channels are dead it equals the dense network, with fewer MACs; the pipeline's
  cut (``pipeline.model_path.cut``) keeps the shared groups whole and equals the fixed-mask replay;
- the keep-one fallback and ``round_to`` padding pick the most alive channels (lowest z).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from graph_support import close
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from soft_prune_jax import prune_model
from soft_prune_jax.compact.prune_model import masked_reference
from soft_prune_jax.models import DenseNet, PreActResNet, ResNet, common, model_names, user
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import macs, masked

from conftest import TINY, tiny_config, tiny_model

# one draw per architecture and run: eleven architectures compile per test
ONE = settings(max_examples=1, deadline=None, phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])


def test_tiny_versions_cover_every_builtin():
    assert set(TINY) == set(model_names())


@functools.cache
def _case(name, seed=0, fraction=0.5, dropped=(0.0, -100.0), also=()):
    """(model, variables, x) as conftest's ``tiny`` makes them -- in every ``masked_bn*`` BN (and in the
    BNs named in ``also``) a random ``fraction`` of channels has (scale, bias) = ``dropped`` (default:
    dead, zero for every input), never all of them; other BNs random and alive -- but drawn in NumPy
    from the abstract init: ``tiny`` initialises eagerly, some 15 CPU seconds per model."""
    _, shape, _ = TINY[name]
    model = tiny_model(name)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct(shape, jnp.float32))
    rng = np.random.default_rng(seed)
    flat = {}
    for k, leaf in traverse_util.flatten_dict(abstract).items():
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        flat[k] = rng.normal(0.0, np.sqrt(2.0 / fan_in) if len(leaf.shape) > 1 else 0.1, leaf.shape)
    for k in sorted(k for k in flat if k[0] == "params" and k[-1] == "scale"):
        n, module = flat[k].shape[0], k[1:-1]
        chosen = module[-1].startswith(M.MASKED_PREFIX) or "/".join(module) in also
        dead = rng.random(n) < fraction if chosen else np.zeros(n, bool)
        dead[rng.integers(n)] = False
        flat[k] = np.where(dead, dropped[0], rng.uniform(0.5, 1.5, n))
        flat[k[:-1] + ("bias",)] = np.where(dead, dropped[1], rng.uniform(0.1, 1.0, n))
        flat[("batch_stats",) + module + ("mean",)] = rng.normal(0, 0.3, n)
        flat[("batch_stats",) + module + ("var",)] = rng.uniform(0.5, 2.0, n)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), traverse_util.unflatten_dict(flat))
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=shape), jnp.float32)
    return model, variables, x


def _user(name, **kwargs):
    """The built-in ``name`` as the pipeline builds it: by its registry name, like a user's model."""
    kw, _, classes = TINY[name]
    return user.build(name, classes, {**kw, **kwargs})


def _xla(fn):
    """``fn`` jitted with every conv one XLA conv: the channel algebra is what these tests check, and
    the CPU formulations compile several times slower (test_models.py checks they are equal)."""

    def run(*args):
        with fast_conv.flax_conv_formulation("xla"):
            return jax.jit(fn)(*args)

    return run


def _shared_preact(model) -> set:
    """The first blocks' shared BN-ReLUs (``block*/bn1``) whose output feeds a projection: for the graph
    a unit of a prunable group (its output is read by two convs only); the paper has no mask there."""
    if not isinstance(model, PreActResNet):
        return set()
    out, b, stream = set(), 0, model.stem_width
    for size, width in zip(model.stage_sizes, model.stage_widths):
        out_width = 4 * width if model.bottleneck else width
        if b > 0 or stream != out_width:
            out.add(f"block{b}/bn1")
        b, stream = b + size, out_width
    return out


def _spec(model) -> dict:
    """{paper unit: (the conv whose outputs it normalises, or None where it reads a shared value; the
    convs / head reading it)}, written from the architectures' definitions (the old structure spec)."""
    out = {}
    if isinstance(model, PreActResNet):
        b, convs = 0, 3 if model.bottleneck else 2
        for size in model.stage_sizes:
            for i in range(size):
                blk = f"block{b}/"
                if i > 0:  # a first block's BN-ReLU is shared with the shortcut: no mask
                    out[blk + "masked_bn1"] = (None, (blk + "conv1",))
                for j in range(2, convs + 1):
                    out[blk + f"masked_bn{j}"] = (blk + f"conv{j - 1}", (blk + f"conv{j}",))
                b += 1
        out["masked_bn_final"] = (None, ("head",))
    elif isinstance(model, DenseNet):
        n = model.num_blocks * model.layers_per_block + model.num_blocks - 1
        out = {f"masked_bn{u}": (None, (f"conv{u}",)) for u in range(n)}
        out[f"masked_bn{n}"] = (None, ("head",))
    elif isinstance(model, ResNet):
        if model.stem_masked:  # a chain unit: the stem feeds block0's conv1 and projection only
            out["masked_bn_stem"] = ("stem", ("block0/conv1", "block0/proj"))
        inner = 2 if model.bottleneck else 1
        for b in range(sum(model.stage_sizes)):
            for j in range(1, inner + 1):
                out[f"block{b}/masked_bn{j}"] = (f"block{b}/conv{j}", (f"block{b}/conv{j + 1}",))
    else:  # VGG: every conv's BN-ReLU feeds the next conv
        n = sum(w != "M" for w in model.widths)
        out = {f"masked_bn{i}": (f"conv{i}", (f"conv{i + 1}" if i + 1 < n else "head",)) for i in range(n)}
    return out


def _members(unit, producer, consumers) -> set:
    """The (variable path, axis) pairs one paper unit's mask governs: its BN, what it normalises, its readers."""
    path = lambda name: tuple(name.split("/"))  # noqa: E731
    out = {((col,) + path(unit) + (leaf,), 0) for col, leaf in STATS_AND_AFFINE}
    out |= {(("params",) + path(c) + ("kernel",), 0 if c == "head" else 2) for c in consumers}
    if producer is not None:
        out.add((("params",) + path(producer) + ("kernel",), 3))
    return out


STATS_AND_AFFINE = (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_traced_units_are_where_the_paper_puts_masks(name):
    model, variables, x = _case(name)
    units = masked.UnitSet.analyze(_user(name), variables, x)
    spec, paper = _spec(model), M.masked_layers(variables["params"])
    assert set(spec) == set(paper)  # the spec names every masked_bn* BN
    assert [u.name for u in units.units] and {u.name for u in units.units} == set(spec)
    assert len({u.group for u in units.units}) == len(units.units)  # each the only unit of its group
    for u in units.units:
        grp = units.analysis.group(u.group)
        assert u.channels == grp.size == paper[u.name]["scale"].shape[0]
        assert {(m.path, m.axis) for m in grp.members} == _members(u.name, *spec[u.name]), u.name
    # the shared BN-ReLUs: their groups whole, with the keep_whole reason; no other group is
    shared = _shared_preact(model)
    assert set(units.whole) == {grp.name for grp in units.analysis.groups if {v.name for v in grp.units} & shared}
    assert {n for n, why in units.skipped.items() if "keep_whole" in why} == shared
    for unit in shared:
        assert units.skipped[unit] == f"kept whole: unit {unit!r} matches the model's keep_whole 'block*/bn1'"


def _widths_follow_plans(compact, compact_vars):
    """Every unit's BN in the compact variables has exactly its group's kept channels."""
    for name, plan in compact.program.plans.items():
        for unit in compact.program.analysis.group(name).units if plan.prunable else ():
            scale = compact_vars["params"]
            for key in unit.name.split("/") + ["scale"]:
                scale = scale[key]
            assert scale.shape == (len(plan.kept),), unit.name


@pytest.mark.parametrize("name", sorted(TINY))
@ONE
@given(seed=st.integers(0, 2**16))
def test_cut_is_exact(name, seed):
    """Dead channels (the default cut: the units' hard masks) -- the compact model is the dense one,
    with fewer MACs; random keep masks on every prunable group (alive channels dropped too) -- it is
    the network with those channels zeroed at the unit outputs. ``check=False``: a group the self-check
    would leave whole cannot hide a wrong cut here. The shared groups of a pre-activation ResNet are
    left whole by the traced pipeline (test_pipeline_cut_keeps_the_shared_groups_whole), not here."""
    model, variables, x = _case(name, seed)
    compact, compact_vars = prune_model(model, variables, x, check=False)
    compact.program.formulation = None  # XLA's convs (see _xla)
    plans = [p for p in compact.program.plans.values() if p.prunable]
    assert sum(len(p.kept) for p in plans) < sum(p.total for p in plans)
    _widths_follow_plans(compact, compact_vars)
    close(_xla(compact.apply)(compact_vars, x), _xla(model.apply)(variables, x))
    assert macs.of_compact(compact).macs < macs.count(compact.program.analysis).macs

    rng = np.random.default_rng(seed)
    keep = {p.name: rng.random(p.total) < 0.5 for p in plans}
    compact, compact_vars = prune_model(model, variables, x, keep=keep, check=False)
    compact.program.formulation = None
    for p in compact.program.plans.values():
        if p.name in keep:  # exactly the channels asked for (a group never goes empty)
            assert set(np.flatnonzero(keep[p.name])) <= set(p.kept) and len(p.kept) == max(1, keep[p.name].sum())
    _widths_follow_plans(compact, compact_vars)
    close(_xla(compact.apply)(compact_vars, x), jax.jit(lambda v, x: masked_reference(compact, v, x))(variables, x))


def _hard_masked_by_hand(variables, mask: M.MaskConfig):
    """The variables with every ``masked_bn*`` channel that SCP's hard mask drops (pi >= 0.5 from the
    BN's own scale and bias) turned off in the BN itself (scale 0, bias -1: ReLU output exactly 0)."""
    params = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables["params"])))
    dropped = 0
    for unit, layer in M.masked_layers(variables["params"]).items():
        pi = M.prune_probability(M.deactivation_probability(layer["scale"], layer["bias"], mask.eps), mask.k, mask.c)
        keep = np.asarray(M.hard_mask(pi)) > 0.5
        path = tuple(unit.split("/"))
        params[path + ("scale",)] = np.where(keep, params[path + ("scale",)], 0.0)
        params[path + ("bias",)] = np.where(keep, params[path + ("bias",)], -1.0)
        dropped += int((~keep).sum())
    assert dropped
    return {**variables, "params": jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(params))}


@pytest.mark.parametrize("name", ["fmnist_cnn", "resnet164", "densenet40", "resnet50"])  # one per family
def test_masks_inserted_by_replay_evaluate_as_the_hard_masks(name):
    """SCP's masks put on the built-in by the traced replay (``MaskedModel``, 'soft'): at evaluation each
    unit's hard mask from its own (gamma, beta), where the paper puts it -- the network with the dropped
    channels switched off by hand. Dropped channels here are alive (scale 0.5, bias -1: pi > 0.5 yet
    some outputs > 0), so the masks change the output."""
    model, variables, x = _case(name, 3, 0.5, (0.5, -1.0))
    um = _user(name)
    scp = masked.MaskedModel(um, masked.UnitSet.analyze(um, variables, x), "soft", mask=M.MaskConfig())
    out = _xla(scp.apply)(variables, x)
    close(out, _xla(model.apply)(_hard_masked_by_hand(variables, M.MaskConfig()), x))
    assert np.max(np.abs(np.asarray(out) - np.asarray(_xla(model.apply)(variables, x)))) > 1e-3  # the masks act


def test_pipeline_cut_keeps_the_shared_groups_whole():
    """``pipeline.model_path.cut`` of a tiny ResNet-56 config (SCP's hard masks). Channels that SCP drops are
    alive (scale 0.5, bias -1), in the paper's units and in the shared BN-ReLUs of the projecting first
    blocks alike; the shared groups keep every channel, and the compact model equals the SCP model at
    evaluation and the fixed-mask replay of the kept channels."""
    kwargs, shape, _ = TINY["resnet56"]
    model, variables, x = _case("resnet56", 5, 0.5, (0.5, -1.0), also=("block2/bn1", "block4/bn1"))
    shared = _shared_preact(model)
    assert shared == {"block2/bn1", "block4/bn1"}
    config = tiny_config(model="resnet56")
    config.model_kwargs = dict(kwargs)  # tiny_config(model_kwargs=...) would merge into fmnist_cnn's widths
    compact, compact_vars = model_path.cut(config, variables, shape[1:])
    um, units = model_path.setup(config, shape[1:])
    plans = compact.program.plans
    assert set(units.whole) == shared
    assert all(len(plans[name].kept) == plans[name].total for name in shared)
    assert any(len(p.kept) < p.total for p in plans.values() if p.prunable)
    kept = {n: p.kept for n, p in plans.items() if p.prunable}
    fixed = masked.MaskedModel(um, units, "fixed", fixed=units.unit_masks_of(kept))
    out = jax.jit(compact.apply)(compact_vars, x)
    close(out, _xla(fixed.apply)(variables, x))
    close(out, _xla(masked.MaskedModel(um, units, "soft").apply)(variables, x))


def test_training_replay_keeps_custom_gradients():
    """SCP's training replay of the CPU formulation keeps its custom_vjp calls whole (``fast_conv``'s own
    weight gradients, not autodiff of the forward; on a CPU backend, where it emits them) and gets the
    gradient XLA's convs get; the masked BNs' scale and bias get finite, non-zero gradients."""
    _, variables, x = _case("fmnist_cnn", 0, 0.0)
    grads = {}
    for conv in (fast_conv.Conv, nn.Conv):
        # BN outside a mapped step; Flax's max-pool in both (test_models.py: the CPU pool's jitted gradient)
        um = _user("fmnist_cnn", conv=conv, norm=nn.BatchNorm, pool=common.max_pool_2x2)
        model = masked.MaskedModel(um, masked.UnitSet.analyze(um, variables, x), "soft", mask=M.MaskConfig())

        def loss(params, model=model):
            logits, _ = model.apply({**variables, "params": params}, x, train=True, rngs={"gumbel": jax.random.key(0)})
            return jnp.sum(jnp.square(logits))

        grads[conv] = jax.jit(jax.grad(loss))(variables["params"])
        graph, _ = model._train_graph(variables, x, jax.random.key(1))
        kept = [e for e in graph.eqns if e.name in masked.CUSTOM_VJP]
        assert len(kept) == (3 if conv is fast_conv.Conv and jax.default_backend() == "cpu" else 0)  # one per conv
    jax.tree.map(close, grads[fast_conv.Conv], grads[nn.Conv])
    for layer in M.masked_layers(grads[nn.Conv]).values():
        for leaf in ("scale", "bias"):
            assert np.all(np.isfinite(layer[leaf])) and np.any(np.abs(layer[leaf]) > 0)


def test_keep_one_and_round_to_pick_the_lowest_z():
    """Every masked channel dead with q = 1 in float32 (pi ties): the fallback keeps the lowest-z channel
    of each group (argmin pi would keep channel 0), and ``round_to=4`` the four lowest-z channels."""
    model, variables, x = _case("vgg16", 1)
    params = jax.tree.map(np.asarray, variables["params"])
    rng = np.random.default_rng(1)
    for layer in M.masked_layers(params).values():
        layer["scale"] = np.ones_like(layer["scale"])
        layer["bias"] = -8.0 - rng.permutation(layer["bias"].size).astype(np.float32)  # z = 8.05, 9.05, ...
    variables = {**variables, "params": params}
    layers = M.masked_layers(params)
    not_first = []
    for round_to, count in ((1, 1), (4, 4)):
        compact, _ = prune_model(model, variables, x, round_to=round_to, check=False)
        for unit, layer in layers.items():
            pi = np.asarray(M.prune_probability(M.deactivation_probability(layer["scale"], layer["bias"])))
            assert np.all(pi == pi[0]) and pi[0] > 0.5  # every channel dropped, argmin pi = 0
            z = np.asarray(M.deactivation_z(layer["scale"], layer["bias"]))
            expected = np.sort(np.argsort(z)[: min(count, z.size)])
            assert list(compact.program.plans[unit].kept) == list(expected), unit
            not_first.append(count == 1 and expected[0] != 0)
    assert any(not_first)  # somewhere the first channel would have been the wrong one
