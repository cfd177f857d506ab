"""The ``LayerOp`` of every conv / dense layer of a traced graph (``compact.layer_timings``), by layer path.

The same layers, in the same order and under the same paths, as ``traced.macs.count`` and so as the
cost model of ``traced.graph_cost``: the latency model of every model is built over them
(``compact.layer_timings.latency_model``). A conv with another layout, dilation, or groups other than
depthwise has no op: its time is part of the model's constant rest.
"""

from __future__ import annotations

import math

from soft_prune_jax.compact.layer_timings import CONV, DENSE, LayerOp
from soft_prune_jax.traced import macs


def graph_ops(analysis) -> dict[str, LayerOp]:
    """{layer path: LayerOp} of the graph of ``analysis`` (one example per batch row)."""
    g = analysis.graph
    batch = g.shapes[g.input_ids[0]][0] if g.input_ids and g.shapes[g.input_ids[0]] else 1
    ops = {}
    for e, path in macs.layer_equations(g):
        name = "/".join(path[1:-1])
        x, w, y = g.shapes[e.ins[0]], g.shapes[e.ins[1]], g.shapes[e.outs[0]]
        if e.name == "dot_general":
            ops[name] = LayerOp(DENSE, positions=max(1, math.prod(y[:-1]) // max(batch, 1)))
            continue
        p = e.params
        dn = p["dimension_numbers"]
        groups = int(p.get("feature_group_count", 1))
        plain = len(dn.lhs_spec) == 4 and all(
            d == 1 for d in tuple(p.get("lhs_dilation") or (1, 1)) + tuple(p.get("rhs_dilation") or (1, 1))
        )
        depthwise = groups > 1 and w[dn.rhs_spec[1]] == 1
        if not plain or (groups > 1 and not depthwise):
            continue
        ops[name] = LayerOp(
            CONV,
            tuple(int(x[a]) for a in dn.lhs_spec[2:]),
            tuple(int(w[a]) for a in dn.rhs_spec[2:]),
            tuple(int(s) for s in p["window_strides"]),
            tuple(tuple(int(v) for v in pad) for pad in p["padding"]),
            depthwise=depthwise,
        )
    return ops
