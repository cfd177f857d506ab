"""The MAC counter: MACs and parameters of a traced model, dense or with channels cut, as a
``flops.FlopCount``.

Every model, built-in or a user's, linen or NNX, and the compact model replayed from its graph, is
counted off the same traced graph: every ``conv_general_dilated`` / ``dot_general`` whose kernel is a
parameter costs, per example, one MAC per kernel weight feeding each output position (the convention
of ``measure.flops``), with the shapes the cut leaves (``interpret.compact_shape``). Rows are named by
the kernel's module path ('block0/conv1'), so ``report.compare`` matches dense and compact rows; the
masked channels are the prunable groups' widths. The cost model (``traced.graph_cost``) and the latency ops
(``traced.graph_ops``) read the same layers (``layer_equations``).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from soft_prune_jax.compact import interpret as I
from soft_prune_jax.compact.prune_model import alive_of, decide
from soft_prune_jax.graph import groups as G
from soft_prune_jax.graph.ir import Lit
from soft_prune_jax.measure.flops import CONV, DENSE, FlopCount, LayerCount

_CARRY = ("convert_element_type", "reshape", "copy", "transpose")


def _kernel_path(g, vid) -> Optional[tuple]:
    while not isinstance(vid, Lit):
        if vid in g.variable_ids:
            return g.path_of(vid)
        e = g.producer.get(vid)
        if e is None or e.name not in _CARRY:
            return None
        vid = e.ins[0]
    return None


def layer_equations(g) -> list:
    """[(equation, kernel path)] of every conv / dense layer ``count`` counts, in program order."""
    out = []
    for e in g.eqns:
        if e.name not in ("conv_general_dilated", "dot_general") or isinstance(e.ins[1], Lit):
            continue
        path = _kernel_path(g, e.ins[1])
        if path is not None and path[0] == "params":
            out.append((e, path))
    return out


def count(analysis: G.Analysis, kept: Optional[Mapping] = None, plans: Optional[Mapping] = None) -> FlopCount:
    """The ``FlopCount`` of ``analysis``'s graph; ``kept`` ((slot, axis) -> indices) cuts channels,
    ``plans`` (group name -> GroupPlan) gives the masked widths (default: full)."""
    g, kept = analysis.graph, kept or {}

    def shape(slot):
        return I.compact_shape(analysis, kept, slot)

    def operand(e, j):
        return analysis.split_uses.get((e.index, j), e.ins[j])

    batch = g.shapes[g.input_ids[0]][0] if g.input_ids and g.shapes[g.input_ids[0]] else 1
    rows = []
    for e, path in layer_equations(g):
        x, w, y = shape(operand(e, 0)), shape(operand(e, 1)), shape(e.outs[0])
        if e.name == "conv_general_dilated":
            dn = e.params["dimension_numbers"]
            out_c, in_c = y[dn.out_spec[1]], x[dn.lhs_spec[1]]
            spatial = tuple(int(y[a]) for a in dn.out_spec[2:])
            kernel_size = tuple(int(w[a]) for a in dn.rhs_spec[2:])
            kind = CONV
        else:
            # a dense layer over extra axes (per position): those axes, batch aside; () on flat inputs
            out_c, in_c, kernel_size, kind = y[-1], x[-1], (), DENSE
            spatial = tuple(int(d) for d in y[1:-1])
        positions = math.prod(y) // max(batch, 1) // max(out_c, 1) if out_c else 0
        macs = int(positions * math.prod(w)) if out_c else 0
        module = path[1:-1]
        params = sum(
            math.prod(shape(v))
            for v, p in zip(g.variable_ids, g.variable_paths)
            if p[0] == "params" and p[1:-1] == module
        )
        rows.append(
            LayerCount(
                path="/".join(module),
                kind=kind,
                in_channels=int(in_c),
                out_channels=int(out_c),
                kernel_size=kernel_size,
                output_spatial=spatial,
                macs=macs,
                params=int(params),
            )
        )
    total = sum(math.prod(shape(v)) for v, p in zip(g.variable_ids, g.variable_paths) if p[0] == "params")
    widths = {}
    for grp in analysis.groups:
        if grp.prunable:
            widths[grp.name] = len(plans[grp.name].kept) if plans and grp.name in plans else grp.size
    input_shape = tuple(g.shapes[g.input_ids[0]][1:]) if g.input_ids else ()
    return FlopCount(layers=tuple(rows), params=int(total), masked_channels=widths, input_shape=input_shape)


def of_compact(compact) -> FlopCount:
    """The count of a ``prune_model`` / ``prune_traced`` result (its first traced input shape)."""
    program = compact.program
    analysis, kept, _ = next(iter(program.cache.values()))
    return count(analysis, kept, program.plans)


def macs_ratio_fn(analysis: G.Analysis, consts, mask_config, round_to: int):
    """keep ({group: 0/1 mask}) -> compact MACs / dense MACs, with prune_model's own decisions."""
    dense = count(analysis).macs

    def ratio(keep) -> float:
        plans = decide(analysis, consts, keep=keep, round_to=round_to, mask_config=mask_config)
        kept = I.kept_indices(analysis, alive_of(analysis, plans))
        return count(analysis, kept, plans).macs / max(dense, 1)

    return ratio
