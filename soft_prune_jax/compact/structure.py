"""Which arrays each mask governs, written down once per architecture.

A ``MaskGroup`` is the dependency set of one masked BN unit (the Torch-Pruning idea of coupled
channels): the BN's own scale/bias/mean/var, the output channels of the conv that produces those
channels (post-activation chains only) and the input channels of every consumer (the next conv, or
the classifier's rows). Keeping channel set K of a mask means taking K along every listed axis.
Every (array, axis) pair belongs to at most one group, which ``describe`` checks.

``rebuild`` turns the kept channel indices of every group into the compact model: the same class
with smaller widths (chains, ImageNet ResNets) and channel selections (pre-activation units, whose
masks select which channels of a shared tensor a consumer reads).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import numpy as np

from soft_prune_jax.models import VGG, DenseNet, PreActResNet, ResNet
from soft_prune_jax.models.vgg import POOL

Path = tuple[str, ...]
Kept = Mapping[str, np.ndarray]  # group name -> sorted kept channel indices


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


def _bn(path: Path) -> list[ArraySlice]:
    return [
        ArraySlice("params", path + ("scale",), 0),
        ArraySlice("params", path + ("bias",), 0),
        ArraySlice("batch_stats", path + ("mean",), 0),
        ArraySlice("batch_stats", path + ("var",), 0),
    ]


def _out(conv: Path) -> ArraySlice:
    return ArraySlice("params", conv + ("kernel",), 3)


def _in(conv: Path) -> ArraySlice:
    return ArraySlice("params", conv + ("kernel",), 2)


def _head() -> ArraySlice:
    return ArraySlice("params", ("head", "kernel"), 0)


def _group(unit: Path, *others: ArraySlice, keep_at_least_one: bool = False) -> MaskGroup:
    return MaskGroup("/".join(unit), tuple(_bn(unit)) + tuple(others), keep_at_least_one)


def _compose(previous: Optional[Sequence[int]], kept: np.ndarray) -> tuple[int, ...]:
    """Channel selection of a unit that already read ``previous`` and now keeps ``kept`` of those."""
    kept = [int(i) for i in kept]
    return tuple(kept) if previous is None else tuple(int(previous[i]) for i in kept)


def _vgg(model: VGG) -> Structure:
    n = len(model.conv_widths)
    groups = []
    for i in range(n):
        consumer = _in((f"conv{i + 1}",)) if i + 1 < n else _head()
        groups.append(_group((f"masked_bn{i}",), _out((f"conv{i}",)), consumer, keep_at_least_one=True))

    def rebuild(kept: Kept) -> nn.Module:
        counts = iter(len(kept[f"masked_bn{i}"]) for i in range(n))
        return model.clone(widths=tuple(w if w == POOL else next(counts) for w in model.widths), mask=None)

    folds = tuple(Fold((f"conv{i}",), (f"masked_bn{i}",)) for i in range(n))
    return Structure(tuple(groups), rebuild, ("conv0", "kernel"), folds)


def _preact_resnet(model: PreActResNet) -> Structure:
    inner = model.block_widths or model.full_block_widths()
    reads = model.block_reads or (None,) * len(inner)
    firsts, b = [], 0
    for size in model.stage_sizes:
        firsts += [i == 0 for i in range(size)]
    groups = []
    for b, widths in enumerate(inner):
        blk = (f"block{b}",)
        convs = [blk + (f"conv{j + 1}",) for j in range(len(widths) + 1)]
        if not firsts[b]:
            groups.append(_group(blk + ("masked_bn1",), _in(convs[0])))
        for j in range(len(widths)):
            groups.append(_group(blk + (f"masked_bn{j + 2}",), _out(convs[j]), _in(convs[j + 1])))
    groups.append(_group(("masked_bn_final",), _head()))

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

    # Only the BNs inside a branch follow a conv directly; the others read the residual stream.
    folds = tuple(
        Fold((f"block{b}", f"conv{j + 1}"), (f"block{b}", f"masked_bn{j + 2}"))
        for b, widths in enumerate(inner)
        for j in range(len(widths))
    )
    return Structure(tuple(groups), rebuild, ("stem", "kernel"), folds)


def _densenet(model: DenseNet) -> Structure:
    reads = model.reads or (None,) * model.num_units
    groups = []
    for u in range(model.num_units):
        consumer = _in((f"conv{u}",)) if u + 1 < model.num_units else _head()
        groups.append(_group((f"masked_bn{u}",), consumer))

    def rebuild(kept: Kept) -> nn.Module:
        return model.clone(
            reads=tuple(_compose(reads[u], kept[f"masked_bn{u}"]) for u in range(model.num_units)), mask=None
        )

    return Structure(tuple(groups), rebuild, ("stem", "kernel"))


def _resnet(model: ResNet) -> Structure:
    inner = model.block_widths or model.full_block_widths()
    groups = []
    stem_bn = ("masked_bn_stem",) if model.stem_masked else ("bn_stem",)
    if model.stem_masked:  # a chain unit: the stem's outputs feed block0's conv1 and projection only
        groups.append(
            _group(stem_bn, _out(("stem",)), _in(("block0", "conv1")), _in(("block0", "proj")), keep_at_least_one=True)
        )
    for b, widths in enumerate(inner):
        blk = (f"block{b}",)
        for j in range(len(widths)):
            groups.append(
                _group(blk + (f"masked_bn{j + 1}",), _out(blk + (f"conv{j + 1}",)), _in(blk + (f"conv{j + 2}",)))
            )

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

    folds = [Fold(("stem",), stem_bn)]
    for b, widths in enumerate(inner):
        blk = (f"block{b}",)
        folds += [Fold(blk + (f"conv{j + 1}",), blk + (f"masked_bn{j + 1}",)) for j in range(len(widths))]
        folds += [
            Fold(blk + (f"conv{len(widths) + 1}",), blk + (f"bn{len(widths) + 1}", "bn")),
            Fold(blk + ("proj",), blk + ("proj_bn", "bn")),
        ]
    return Structure(tuple(groups), rebuild, ("stem", "kernel"), tuple(folds))


_DESCRIBERS: dict[type, Callable[[nn.Module], Structure]] = {
    VGG: _vgg,
    PreActResNet: _preact_resnet,
    DenseNet: _densenet,
    ResNet: _resnet,
}


def describe(model: nn.Module) -> Structure:
    """The structure description of ``model``; every (array, axis) is owned by one group at most."""
    describer = _DESCRIBERS.get(type(model))
    if describer is None:
        known = ", ".join(cls.__name__ for cls in _DESCRIBERS)
        raise TypeError(f"no structure description for {type(model).__name__}; known architectures: {known}")
    structure = describer(model)
    owners: dict[tuple[str, Path, int], str] = {}
    for group in structure.groups:
        for s in group.slices:
            key = (s.collection, s.path, s.axis)
            if key in owners:
                raise AssertionError(f"{s} is governed by both {owners[key]} and {group.name}")
            owners[key] = group.name
    return structure
