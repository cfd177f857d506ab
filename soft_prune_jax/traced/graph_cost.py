"""The MAC cost model of a model (``scp.cost.CostModel``), read off its traced graph.

The one cost model of every model, built-in or a user's: it comes from the same analysis that masks
and cuts the model (``traced.masked.UnitSet``), and ``scp.cost`` does its arithmetic:

* layers: every conv / dense layer ``traced.macs`` counts, with its MACs per (input, output) channel
  pair. The channels of its input and output axes are the graph's channel labels: each prunable
  group on an axis becomes a term (group, copies) -- copies > 1 where a flatten spreads every
  channel over several features; labels of no prunable group always count. A grouped conv reads
  ``C_in / feature_groups`` channels per output, so its input axis is a constant (a depthwise
  conv's cost follows its output channels only, which are the input's group).
* groups: the prunable groups that hold a unit, each keeping at least one channel
  (``compact.prune_model`` does).
* units: the position in its group of every masked unit's channel, under the name the unit view
  gives it (``UnitSet.unit_view``), so several units of one group combine (``budget.group_keep``).

The dense MACs equal ``traced.macs.count`` of the graph, and the MACs under a group mask equal those of
the compact model ``prune_model`` cuts with it (tests/test_user_budget.py).
"""

from __future__ import annotations

import collections

import numpy as np

from soft_prune_jax.scp import cost as B
from soft_prune_jax.traced import macs
from soft_prune_jax.traced.masked import VIEW_PREFIX, UnitSet


class CostModelError(ValueError):
    """A layer of the user's model whose MACs the cost model cannot express."""


def _channel_axes(g, e) -> tuple[int, int, int]:
    """(input channel axis, output channel axis, feature groups) of a conv / dense equation."""
    if e.name == "conv_general_dilated":
        dn = e.params["dimension_numbers"]
        return dn.lhs_spec[1], dn.out_spec[1], int(e.params.get("feature_group_count", 1))
    (contracting, _), _ = e.params["dimension_numbers"]
    # traced.macs counts the last axes as the channels: only a dense layer of that form is expressed here
    if tuple(contracting) != (len(g.shapes[e.ins[0]]) - 1,):
        raise CostModelError(
            f"a dot_general contracting axes {tuple(contracting)} of an operand of shape {g.shapes[e.ins[0]]}: "
            "expected a dense layer over the last axis for a MAC budget"
        )
    return len(g.shapes[e.ins[0]]) - 1, len(g.shapes[e.outs[0]]) - 1, 1


def _terms(analysis, owner: dict, slot, axis: int, channels: int, where: str) -> B.Terms:
    """The (group, copies) of the prunable groups whose channels lie on ``(slot, axis)``."""
    labels = analysis.slot_labels(slot, axis)
    if labels is None:
        return ()
    if len(labels) != channels:
        raise CostModelError(f"{where}: {len(labels)} channel labels for {channels} channels")
    positions = collections.defaultdict(list)
    for label in labels:
        if int(label) in owner:
            name, k = owner[int(label)]
            positions[name].append(k)
    terms = []
    for name, ks in positions.items():
        counts = np.bincount(ks, minlength=analysis.group(name).size)
        if counts.min() != counts.max():
            raise CostModelError(
                f"{where} holds the channels of group {name!r} unequal numbers of times "
                f"({int(counts.min())} to {int(counts.max())}): a MAC budget expects each channel the same number"
            )
        terms.append((name, int(counts[0])))
    return tuple(terms)


def cost_model(units: UnitSet) -> B.CostModel:
    """The ``CostModel`` of the model ``units`` was analysed from (module docstring)."""
    analysis = units.analysis
    g = analysis.graph
    groups = [grp for grp in analysis.groups if grp.prunable and grp.name in {u.group for u in units.units}]
    owner = {int(label): (grp.name, k) for grp in groups for k, label in enumerate(grp.labels)}
    rows = macs.count(analysis).layers
    layers = []
    for (e, _), row in zip(macs.layer_equations(g), rows, strict=True):
        in_axis, out_axis, feature_groups = _channel_axes(g, e)
        where = f"layer {row.path!r}"
        if feature_groups > 1:
            in_channels, in_terms = row.in_channels // feature_groups, ()
        else:
            x = analysis.split_uses.get((e.index, 0), e.ins[0])
            in_channels, in_terms = row.in_channels, _terms(analysis, owner, x, in_axis, row.in_channels, where)
        out_terms = _terms(analysis, owner, e.outs[0], out_axis, row.out_channels, where)
        pairs = in_channels * row.out_channels
        per_pair = row.macs / pairs if pairs else 0.0
        layers.append(B.CostLayer(row.path, per_pair, in_channels, row.out_channels, in_terms, out_terms))
    unit_channels = tuple(
        B.UnitChannels(
            VIEW_PREFIX + u.name,
            u.group,
            analysis.group(u.group).size,
            tuple(int(i) for i in units.channel_index(u)),
        )
        for u in units.units
    )
    return B.CostModel(
        tuple(layers),
        tuple((grp.name, grp.size) for grp in groups),
        keep_one=frozenset(grp.name for grp in groups),
        units=unit_channels,
    )
