"""Issue 22, step A: every built-in architecture written as a plain Flax module (tests/zoo_builtin.py)
is the same network on the traced path as the built-in class is on its own:

- the same parameters (every path and shape, at full size: so the paper counts of test_models.py);
- the traced analysis finds units exactly where the paper puts masks (the built-in's ``masked_bn*``
  layers), the pre-activation ResNets' shared BN-ReLU of a projecting first block aside (a unit for
  the graph, none in the paper: kept whole here, as the built-in keeps it);
- ``prune_model`` on random keep masks equals the hard-masked twin (``masked_reference``), and on
  BN statistics whose masks drop dead channels it equals the dense twin, the built-in model and the
  built-in surgery's compact class (same arrays, MACs and outputs);
- the ``conv`` swap point: ``fast_conv.Conv`` (the CPU formulations) gives the same units and outputs.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo_builtin
from flax import traverse_util
from graph_support import close
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from soft_prune_jax import prune_model
from soft_prune_jax.compact import surgery
from soft_prune_jax.compact.prune_model import channel_groups, masked_reference
from soft_prune_jax.measure import flops
from soft_prune_jax.method import masks as M
from soft_prune_jax.models import get_model, model_names, user
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.user import macs, masked

CIFAR, IMAGENET = (32, 32, 3), (224, 224, 3)
FULL = {name: (10, CIFAR) for name in ("vgg16", "vgg19", "resnet56", "resnet110", "resnet164", "densenet40")}
FULL.update({name: (1000, IMAGENET) for name in ("resnet18", "resnet34", "resnet50", "resnet101")})
FULL["fmnist_cnn"] = (10, (28, 28, 1))

# Tiny versions of each of the eleven (depth and width shrunk, the structure that decides the units
# kept): the vgg19 / resnet110 / resnet34 / resnet101 entries use their own stage layouts.
TINY = {
    "fmnist_cnn": (dict(widths=(8, "M", 12, 16)), (2, 12, 12, 1), 10),
    "vgg16": (dict(widths=(4, 6, "M", 8, "M", 8, 5)), (2, 8, 8, 3), 10),
    "vgg19": (dict(widths=(4, 4, "M", 6, 6, 6, 6, "M", 8)), (2, 8, 8, 3), 10),
    # stem 8 = stage 1's width: an identity first block, as ResNet-56's (16 -> 16)
    "resnet56": (dict(stage_sizes=(2, 2, 2), stage_widths=(8, 16, 16), stem_width=8), (2, 8, 8, 3), 10),
    "resnet110": (dict(stage_sizes=(3, 1, 2), stage_widths=(4, 6, 8), stem_width=4), (2, 8, 8, 3), 10),
    "resnet164": (dict(stage_sizes=(2, 1, 2), stage_widths=(4, 8, 8)), (2, 8, 8, 3), 10),
    "densenet40": (dict(num_blocks=2, layers_per_block=2, growth_rate=4, stem_width=6), (2, 8, 8, 3), 10),
    # stage 1 at the stem's 64: an identity first block and an unmasked stem, as ResNet-18/34's; the
    # bottleneck ones project (4 * 4 != 64), so their stem is a unit, as ResNet-50/101's
    "resnet18": (dict(stage_sizes=(1, 2, 1, 1), stage_widths=(64, 8, 16, 16)), (2, 32, 32, 3), 7),
    "resnet34": (dict(stage_sizes=(2, 1, 1, 1), stage_widths=(64, 8, 8, 8)), (2, 32, 32, 3), 7),
    "resnet50": (dict(stage_sizes=(1, 2, 1, 1), stage_widths=(4, 8, 8, 8)), (2, 32, 32, 3), 7),
    "resnet101": (dict(stage_sizes=(1, 1, 2, 1), stage_widths=(4, 4, 8, 8)), (2, 32, 32, 3), 7),
}
# one draw per architecture and run: eleven architectures compile per test
ONE = settings(max_examples=1, deadline=None, phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])


def test_the_twins_cover_every_builtin():
    assert set(zoo_builtin.NAMES) == set(model_names()) == set(TINY) == set(FULL)


def _params(model, shape):
    x = jax.ShapeDtypeStruct((1,) + tuple(shape), jnp.float32)
    tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]
    return {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(dict(tree)).items()}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_twin_has_the_builtin_parameters(name):
    """Every parameter path and shape at full size (test_models.py checks the builtins' paper counts)."""
    classes, shape = FULL[name]
    builtin = _params(get_model(name, classes), shape)
    builtin = {"/".join(p for p in k.split("/") if p != "bn"): v for k, v in builtin.items()}
    plain = _params(zoo_builtin.twin(name, classes), shape)
    assert plain == builtin
    assert sum(math.prod(s) for s in plain.values()) == sum(math.prod(s) for s in builtin.values())


@functools.cache
def _case(name, seed, fraction=0.5, dropped=(0.0, -100.0)):
    """(builtin, its variables, twin, the same variables at the twin's paths, x). Random BN statistics:
    in every masked unit a random ``fraction`` of channels has (scale, bias) = ``dropped`` (default:
    dead, zero for every input), never all of them (so no built-in branch is removed whole, surgery's
    extra step); other BNs random and alive."""
    kwargs, shape, classes = TINY[name]
    builtin = get_model(name, classes, **kwargs)
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(surgery.random_variables(builtin, shape, seed, 0))))
    rng = np.random.default_rng(seed)
    for key in sorted(k for k in flat if k[-1] == "scale"):
        n, module = flat[key].shape[0], key[1:-1]
        dead = rng.random(n) < fraction if module[-1].startswith(M.MASKED_PREFIX) else np.zeros(n, bool)
        dead[rng.integers(n)] = False
        flat[key] = np.where(dead, dropped[0], rng.uniform(0.5, 1.5, n)).astype(np.float32)
        flat[key[:-1] + ("bias",)] = np.where(dead, dropped[1], rng.uniform(0.1, 1.0, n)).astype(np.float32)
        flat[("batch_stats",) + module + ("mean",)] = rng.normal(0, 0.3, n).astype(np.float32)
        flat[("batch_stats",) + module + ("var",)] = rng.uniform(0.5, 2.0, n).astype(np.float32)
    variables = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=shape), jnp.float32)
    plain = zoo_builtin.twin(name, classes, **kwargs)
    return builtin, variables, plain, zoo_builtin.builtin_variables(variables), x


def _shared_preact_units(plain) -> set:
    """The pre-activation ResNets' shared BN-ReLU of a first block that projects: the paper has no
    mask there; for the graph it is a unit like any other (its output feeds two convs)."""
    if not isinstance(plain, zoo_builtin.PreActResNet):
        return set()
    out, b, stream = set(), 0, plain.stem_width
    for s, (size, width) in enumerate(zip(plain.stage_sizes, plain.stage_widths)):
        out_width = 4 * width if plain.bottleneck else width
        if s > 0 or stream != out_width:
            out.add(f"block{b}/bn1")
        b, stream = b + size, out_width
    return out


@pytest.mark.parametrize("name", sorted(TINY))
def test_traced_units_are_where_the_paper_puts_masks(name):
    builtin, variables, plain, plain_vars, x = _case(name, 0)
    kwargs, _, classes = TINY[name]
    units = masked.UnitSet.analyze(user.build("zoo_builtin:twin", classes, {"name": name, **kwargs}), plain_vars, x)
    found = {u.name for u in units.units}
    papers = set(M.masked_layers(variables["params"]))
    assert papers and found == papers | _shared_preact_units(plain)
    # each paper unit is the only unit of its group, and a group reads what the built-in mask acts on
    groups = {u.group for u in units.units}
    assert len(groups) == len(units.units)
    for u in units.units:
        if u.name in papers:
            assert u.channels == M.masked_layers(variables["params"])[u.name]["scale"].shape[0]


@pytest.mark.parametrize("name", ["fmnist_cnn", "resnet164", "densenet40", "resnet50"])  # one per family
def test_masks_inserted_by_replay_evaluate_as_the_builtin_units(name):
    """SCP's masks on the twin by the traced replay (``MaskedModel``): at evaluation each unit's hard
    mask from its own (gamma, beta) is where and what the built-in ``MaskedBNReLU`` applies. Dropped
    channels here are alive (scale 0.5, bias -1: pi > 0.5 yet some outputs > 0), so the masks matter;
    the twin's extra shared units are alive and keep everything."""
    builtin, variables, plain, plain_vars, x = _case(name, 3, 0.5, (0.5, -1.0))
    kwargs, _, classes = TINY[name]
    um = user.build("zoo_builtin:twin", classes, {"name": name, **kwargs})
    scp = masked.MaskedModel(um, masked.UnitSet.analyze(um, plain_vars, x), "soft", mask=M.MaskConfig())
    out = builtin.apply(variables, x, train=False)
    close(scp.apply(plain_vars, x), out)
    assert np.max(np.abs(np.asarray(out) - np.asarray(plain.apply(plain_vars, x)))) > 1e-3  # the masks act


def _keep_shared_whole(plain, groups) -> dict:
    shared = _shared_preact_units(plain)
    return {n: np.arange(g.size) for n, g in groups.items() if g.prunable and {u.name for u in g.units} & shared}


@pytest.mark.parametrize("name", sorted(TINY))
@ONE
@given(seed=st.integers(0, 2**16))
def test_cut_equals_hard_masked_dense_builtin_and_surgery(name, seed):
    """Dead channels dropped by the units' hard masks: the compact twin equals its hard-masked self,
    the dense twin, the built-in model and the built-in surgery's compact class (arrays and MACs)."""
    builtin, variables, plain, plain_vars, x = _case(name, seed)
    groups = {g.name: g for g in channel_groups(plain, plain_vars, x)}
    compact, compact_vars = prune_model(plain, plain_vars, x, keep=_keep_shared_whole(plain, groups))
    assert not [p.reason for p in compact.program.plans.values() if "self-check" in p.reason]
    out = compact.apply(compact_vars, x)
    close(out, masked_reference(compact, plain_vars, x))
    close(out, plain.apply(plain_vars, x))
    close(out, builtin.apply(variables, x, train=False))
    hand, hand_vars = surgery.prune(builtin, variables)
    shapes = lambda v: jax.tree.map(np.shape, dict(v["params"]))  # noqa: E731
    assert shapes(compact_vars) == shapes(zoo_builtin.builtin_variables(hand_vars))
    assert flops.model_macs(compact, compact_vars, x) == flops.model_macs(hand, hand_vars, x, train=False)
    assert macs.of_compact(compact).macs < macs.count(compact.program.analysis).macs
    close(out, hand.apply(hand_vars, x, train=False))


@pytest.mark.parametrize("name", sorted(TINY))
@ONE
@given(seed=st.integers(0, 2**16))
def test_cut_on_random_masks_equals_the_hard_masked_twin(name, seed):
    """Random keep masks on every prunable group (alive channels dropped too): the compact model is
    the twin with those channels zeroed at the unit outputs."""
    _, _, plain, plain_vars, x = _case(name, 0, 0.0)
    rng = np.random.default_rng(seed)
    keep = {}
    for g in channel_groups(plain, plain_vars, x):
        if g.prunable:
            mask = rng.random(g.size) < 0.5
            mask[rng.integers(g.size)] = True
            keep[g.name] = mask
    compact, compact_vars = prune_model(plain, plain_vars, x, keep=keep)
    assert not [p.reason for p in compact.program.plans.values() if "self-check" in p.reason]
    assert sum(len(p.kept) for p in compact.program.plans.values() if p.prunable) < sum(
        p.total for p in compact.program.plans.values() if p.prunable
    )
    close(compact.apply(compact_vars, x), masked_reference(compact, plain_vars, x))


@pytest.mark.parametrize("name", ["fmnist_cnn", "resnet56", "densenet40", "resnet50"])
def test_the_cpu_swap_points_keep_units_and_outputs(name):
    """``conv=fast_conv.Conv`` and VGG's ``pool=max_pool_2x2`` (chosen where the backend is a CPU):
    same variables, units and outputs."""
    _, _, plain, plain_vars, x = _case(name, 0)
    kwargs, _, classes = TINY[name]
    fast = zoo_builtin.cpu_twin(name, classes, **kwargs)
    assert isinstance(fast.conv, type) and issubclass(fast.conv, fast_conv.Conv)
    close(fast.apply(plain_vars, x), plain.apply(plain_vars, x))
    names = lambda m: sorted(g.name for g in channel_groups(m, plain_vars, x) if g.prunable)  # noqa: E731
    assert names(fast) == names(plain)


def test_the_training_replay_keeps_custom_gradients():
    """SCP's training replay of the CPU twin keeps its custom_vjp calls whole (``fast_conv``'s own
    weight gradients, not autodiff of the forward) and gets the gradient the XLA-conv twin gets."""
    _, _, _, plain_vars, x = _case("fmnist_cnn", 0)
    kwargs, _, classes = TINY["fmnist_cnn"]
    grads = {}
    for spec in ("twin", "cpu_twin"):
        um = user.build(f"zoo_builtin:{spec}", classes, {"name": "fmnist_cnn", **kwargs})
        model = masked.MaskedModel(um, masked.UnitSet.analyze(um, plain_vars, x), "soft", mask=M.MaskConfig())

        def loss(params, model=model):
            variables = {**plain_vars, "params": params}
            logits, _ = model.apply(variables, x, train=True, rngs={"gumbel": jax.random.PRNGKey(0)})
            return jnp.sum(jnp.square(logits))

        grads[spec] = jax.grad(loss)(plain_vars["params"])
        graph, _ = model._train_graph(plain_vars, x, jax.random.PRNGKey(1))
        kept = [e for e in graph.eqns if e.name in masked.CUSTOM_VJP]
        assert len(kept) == (3 if spec == "cpu_twin" else 0)  # one per conv
    jax.tree.map(close, grads["cpu_twin"], grads["twin"])
