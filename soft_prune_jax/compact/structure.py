"""Which arrays each mask governs (found from the computation) and how a built-in class is rebuilt.

A ``MaskGroup`` is the dependency set of one masked BN unit (the Torch-Pruning idea of coupled
channels): the BN's own scale/bias/mean/var, the output channels of the conv that produces those
channels (post-activation chains only) and the input channels of every consumer (the next conv, or
the classifier's rows). Keeping channel set K of a mask means taking K along every listed axis.

One source of truth: the groups, the conv -> BN ``folds`` and the ``input_kernel`` are derived from
the traced evaluation of the model (``graph``: the same analysis ``prune_model`` runs on any
Flax model), never written per architecture. The only per-class knowledge left here is what a
computation cannot tell: which constructor arguments are widths, i.e. the full-width model to
trace (``_full``) and the compact class built from kept channels (``rebuild``: smaller widths for
chains and ImageNet ResNets, channel selections for pre-activation units and DenseNet, whose masks
select which channels of a shared tensor a consumer reads). tests/test_structure_spec.py holds the
groups a human writes for every built-in architecture, so a wrong discovery still fails a test.

Derivation traces the model at its full widths, without masks, on a small abstract input: group
membership (which arrays and axes) does not depend on the spatial size, the input channels or the
mask, and a compact model shares its full-width model's groups (parts it removed are skipped by
surgery). It is cached per full-width model, so a model and all its compact versions trace once.
A masked unit must have exactly one prunable group of its own, every member must map channel i to
channel i, and every (array, axis) may belong to one group only; anything else is an error rather
than a silently different cut. ``keep_at_least_one`` is read from the ``MaskedBNReLU`` modules that
ran during the trace (their own attribute: the evaluation rule surgery must reproduce), and folds
are the conv -> BN pairs of the trace that the class's ``bn_folded=True`` form actually drops.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from soft_prune_jax.graph import analyze, trace
from soft_prune_jax.graph.ir import Graph, Lit
from soft_prune_jax.method import masks as M
from soft_prune_jax.method.units import MaskedBNReLU
from soft_prune_jax.models import VGG, DenseNet, PreActResNet, ResNet
from soft_prune_jax.models.vgg import POOL
from soft_prune_jax.ops import fast_conv

Path = tuple[str, ...]
Kept = Mapping[str, np.ndarray]  # group name -> sorted kept channel indices

# The abstract input the full-width model is traced on: 32 x 32 survives every built-in's strides;
# 3 channels and batch 2 keep every axis of interest longer than 1 (a length-1 axis looks like a
# broadcast to the unit recogniser).
_TRACE_INPUT = (2, 32, 32, 3)
_PASS = ("convert_element_type", "copy", "copy_p")
_CARRY = _PASS + ("reshape", "broadcast_in_dim", "squeeze", "expand_dims")


class StructureError(AssertionError):
    """The traced computation of a built-in model does not give one clean group per masked unit."""


@dataclasses.dataclass(frozen=True)
class ArraySlice:
    collection: str  # 'params' or 'batch_stats'
    path: Path  # path inside the collection, e.g. ('block3', 'conv1', 'kernel')
    axis: int


@dataclasses.dataclass(frozen=True)
class MaskGroup:
    name: str  # path of the masked BN unit in params, '/'-joined: the key used by masks.masked_layers
    slices: tuple[ArraySlice, ...]
    keep_at_least_one: bool = False  # plain chains never lose their last channel

    @property
    def path(self) -> Path:
        return tuple(self.name.split("/"))


@dataclasses.dataclass(frozen=True)
class Fold:
    """A BN that directly follows a conv, so it can be folded into that conv for inference."""

    conv: Path  # the conv module; its kernel is scaled and it gains a bias
    bn: Path  # the BN's module path in params (scale, bias) and batch_stats (mean, var)


@dataclasses.dataclass(frozen=True)
class Structure:
    groups: tuple[MaskGroup, ...]
    rebuild: Callable[[Kept], nn.Module]  # kept indices per group -> compact model (no masks)
    input_kernel: Path  # the first conv's kernel: its axis 2 is the number of input channels
    folds: tuple[Fold, ...] = ()  # every conv -> BN pair (empty where none exists, e.g. DenseNet)


# ---- per class: the full-width model and the compact rebuild ---------------------------------


def _compose(previous: Optional[Sequence[int]], kept: np.ndarray) -> tuple[int, ...]:
    """Channel selection of a unit that already read ``previous`` and now keeps ``kept`` of those."""
    kept = [int(i) for i in kept]
    return tuple(kept) if previous is None else tuple(int(previous[i]) for i in kept)


def _vgg_full(model: VGG) -> VGG:
    # The constructor's widths are the only widths a VGG has; lifting empty and single-channel
    # layers to 2 keeps every channel axis visible to the tracer without changing the groups.
    return model.clone(widths=tuple(w if w == POOL else max(int(w), 2) for w in model.widths))


def _vgg_rebuild(model: VGG) -> Callable[[Kept], nn.Module]:
    n = sum(1 for w in model.widths if w != POOL)

    def rebuild(kept: Kept) -> nn.Module:
        counts = iter(len(kept[f"masked_bn{i}"]) for i in range(n))
        return model.clone(widths=tuple(w if w == POOL else next(counts) for w in model.widths), mask=None)

    return rebuild


def _preact_full(model: PreActResNet) -> PreActResNet:
    return model.clone(block_widths=None, block_reads=None, final_reads=None)


def _preact_rebuild(model: PreActResNet) -> Callable[[Kept], nn.Module]:
    inner = model.block_widths or model.full_block_widths()
    reads = model.block_reads or (None,) * len(inner)
    firsts = [i == 0 for size in model.stage_sizes for i in range(size)]

    def rebuild(kept: Kept) -> nn.Module:
        block_widths, block_reads = [], []
        for b, widths in enumerate(inner):
            blk = f"block{b}/"
            block_widths.append(tuple(len(kept[f"{blk}masked_bn{j + 2}"]) for j in range(len(widths))))
            block_reads.append(None if firsts[b] else _compose(reads[b], kept[f"{blk}masked_bn1"]))
        return model.clone(
            block_widths=tuple(block_widths),
            block_reads=tuple(block_reads),
            final_reads=_compose(model.final_reads, kept["masked_bn_final"]),
            mask=None,
        )

    return rebuild


def _densenet_full(model: DenseNet) -> DenseNet:
    return model.clone(reads=None)


def _densenet_rebuild(model: DenseNet) -> Callable[[Kept], nn.Module]:
    reads = model.reads or (None,) * model.num_units

    def rebuild(kept: Kept) -> nn.Module:
        return model.clone(
            reads=tuple(_compose(reads[u], kept[f"masked_bn{u}"]) for u in range(model.num_units)), mask=None
        )

    return rebuild


def _resnet_full(model: ResNet) -> ResNet:
    return model.clone(block_widths=None, stem_width=None)


def _resnet_rebuild(model: ResNet) -> Callable[[Kept], nn.Module]:
    inner = model.block_widths or model.full_block_widths()

    def rebuild(kept: Kept) -> nn.Module:
        stem = {"stem_width": len(kept["masked_bn_stem"])} if model.stem_masked else {}
        return model.clone(
            block_widths=tuple(
                tuple(len(kept[f"block{b}/masked_bn{j + 1}"]) for j in range(len(widths)))
                for b, widths in enumerate(inner)
            ),
            mask=None,
            **stem,
        )

    return rebuild


_CLASSES: dict[type, tuple[Callable[[nn.Module], nn.Module], Callable[[nn.Module], Callable[[Kept], nn.Module]]]] = {
    VGG: (_vgg_full, _vgg_rebuild),
    PreActResNet: (_preact_full, _preact_rebuild),
    DenseNet: (_densenet_full, _densenet_rebuild),
    ResNet: (_resnet_full, _resnet_rebuild),
}


def describe(model: nn.Module) -> Structure:
    """The structure of ``model`` (a built-in architecture, dense, masked or compact)."""
    entry = _CLASSES.get(type(model))
    if entry is None:
        known = ", ".join(cls.__name__ for cls in _CLASSES)
        raise TypeError(f"no structure description for {type(model).__name__}; known architectures: {known}")
    full, rebuild = entry
    # Masks, folding and the mapped axis do not change which arrays share channels: one trace serves all.
    reference = full(model).clone(
        mask=None, axis_name=None, **({"bn_folded": False} if hasattr(model, "bn_folded") else {})
    )
    groups, input_kernel, folds = _derived(reference)
    return Structure(groups, rebuild(model), input_kernel, folds)


# ---- derivation from the traced computation -------------------------------------------------


@functools.lru_cache(maxsize=64)
def _derived(model: nn.Module) -> tuple[tuple[MaskGroup, ...], Path, tuple[Fold, ...]]:
    x = jax.ShapeDtypeStruct(_TRACE_INPUT, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    keep_one: dict[str, bool] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, MaskedBNReLU):
            keep_one["/".join(context.module.path)] = bool(context.module.keep_at_least_one)
        return next_fun(*args, **kwargs)

    # 'xla': every conv is one conv_general_dilated equation (as prune_model traces linen models).
    with fast_conv.flax_conv_formulation("xla"), nn.intercept_methods(record):
        g = trace(lambda v, x: model.apply(v, x, train=False), variables, x)
    analysis = analyze(g, strip=1)
    what = type(model).__name__
    masked = set(M.masked_layers(variables["params"]))
    found = {}
    for grp in analysis.groups:
        names = [u.name for u in grp.units if u.name in masked]
        if not names:
            continue
        if len(names) > 1 or not grp.prunable:
            why = f"shared with {names}" if len(names) > 1 else grp.reason
            raise StructureError(f"{what}: masked unit {names[0]} has no prunable group of its own ({why})")
        found[names[0]] = (grp.units[0].relu, _group(what, names[0], grp, keep_one.get(names[0], False)))
    missing = sorted(masked - set(found))
    if missing:
        raise StructureError(f"{what}: the traced computation gives no channel group for masked units {missing[:3]}")
    groups = tuple(group for _, group in sorted(found.values(), key=lambda item: item[0]))
    owners: dict[ArraySlice, str] = {}
    for group in groups:
        for s in group.slices:
            if s in owners:
                raise StructureError(f"{what}: {s} is governed by both {owners[s]} and {group.name}")
            owners[s] = group.name
    return groups, _input_kernel(what, analysis), _foldable(model, x, variables, _folds(g))


def _foldable(model: nn.Module, x, variables, folds: tuple[Fold, ...]) -> tuple[Fold, ...]:
    """The conv -> BN pairs the class itself folds (``bn_folded=True`` drops those BNs, the convs gain
    a bias): a BN that directly follows a conv but that the class keeps (a pre-activation stage's
    first BN-ReLU, shared with the shortcut) is no fold, and a BN the class drops must be one."""
    if not hasattr(model, "bn_folded"):
        return ()
    folded = jax.eval_shape(lambda x: model.clone(bn_folded=True).init(jax.random.PRNGKey(0), x, train=False), x)
    params = {tuple(k) for k in traverse_util.flatten_dict(folded["params"])}
    kept = tuple(f for f in folds if f.bn + ("scale",) not in params and f.conv + ("bias",) in params)
    dropped = {k[:-1] for k in traverse_util.flatten_dict(variables["params"]) if k[-1] == "scale"} - {
        k[:-1] for k in params if k[-1] == "scale"
    }
    unexplained = sorted(dropped - {f.bn for f in kept})
    if unexplained:
        raise StructureError(
            f"{type(model).__name__}(bn_folded=True) drops BNs {unexplained[:3]} that follow no conv in the trace"
        )
    return kept


def _group(what: str, name: str, grp, keep_one: bool) -> MaskGroup:
    slices = []
    for m in grp.members:
        if not np.array_equal(m.channel, np.arange(grp.size)):
            raise StructureError(
                f"{what}: {'/'.join(m.path)} axis {m.axis} maps the channels of {name} through an index map; "
                "surgery of the built-in classes slices every governed axis by the kept channels directly"
            )
        slices.append(ArraySlice(m.path[0], tuple(m.path[1:]), int(m.axis)))
    return MaskGroup(name, tuple(slices), keep_one)


def _input_kernel(what: str, analysis) -> Path:
    """The kernel whose input-channel axis is one channel group with the model input's channels."""
    g = analysis.graph
    (x,) = g.input_ids
    channels = (x, len(g.shapes[x]) - 1)
    for grp in analysis.groups:
        on_input = any(
            (slot, ax) == channels
            or (isinstance(slot, tuple) and g.eqns[slot[1]].ins[slot[2]] == x and ax == channels[1])
            for slot, ax in grp.slots
        )
        if not on_input:
            continue
        kernels = [m for m in grp.members if m.path[0] == "params" and m.path[-1] == "kernel" and m.axis == 2]
        if len(kernels) == 1:
            return tuple(kernels[0].path[1:])
    raise StructureError(f"{what}: no single conv kernel reads the model input's channels")


def _leaf(g: Graph, vid) -> Optional[Path]:
    """The variable path ``vid`` is a reshaped / broadcast / cast copy of, if any."""
    while not isinstance(vid, Lit):
        path = g.path_of(vid)
        if path is not None:
            return path
        e = g.producer.get(vid)
        if e is None or e.name not in _CARRY:
            return None
        vid = e.ins[0]
    return None


def _folds(g: Graph) -> tuple[Fold, ...]:
    """Every bias-free conv whose only reader is a batch normalisation's mean subtraction."""
    paths = set(g.variable_paths)
    folds = []
    for e in g.eqns:
        if e.name != "conv_general_dilated":
            continue
        kernel = _leaf(g, e.ins[1])
        if kernel is None or kernel[0] != "params" or ("params",) + kernel[1:-1] + ("bias",) in paths:
            continue
        out = e.outs[0]
        while len(g.uses.get(out, [])) == 1 and g.uses[out][0][0].name in _PASS:
            out = g.uses[out][0][0].outs[0]
        uses = g.uses.get(out, [])
        if len(uses) != 1 or uses[0][0].name != "sub" or uses[0][1] != 0:
            continue
        mean = _leaf(g, uses[0][0].ins[1])
        if mean is None or mean[0] != "batch_stats" or mean[-1] != "mean":
            continue
        bn = mean[1:-1]
        needed = [("params",) + bn + ("scale",), ("params",) + bn + ("bias",), ("batch_stats",) + bn + ("var",)]
        if all(p in paths for p in needed):
            folds.append(Fold(tuple(kernel[1:-1]), tuple(bn)))
    return tuple(folds)
