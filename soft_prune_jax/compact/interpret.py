"""An interpreter of an analysed graph with channels cut out: the compact model's forward pass.

Why an interpreter rather than rebuilding the user's classes with smaller widths: a user's model
code knows nothing about channel selections (a DenseNet layer reading a subset of a concatenation,
a pre-activation block's BN reading part of the stream) and may hold widths in attributes we
cannot see. Replaying the traced equations on sliced arrays needs no knowledge of the classes:
each equation is bound again with the shape-bearing parameters updated (reshape ``new_sizes``,
``broadcast_in_dim`` shape, a depthwise conv's ``feature_group_count``, ``split`` sizes, full
``slice`` limits) and its output shape checked against the plan, so a primitive whose parameters
were not updated is a loud error, never a silently wrong model. Plain 2-D NHWC convolutions go
through ``ops.fast_conv.conv2d`` with the 'auto' formulation, so the compact model avoids
XLA:CPU's slow conv shapes (on a CPU; elsewhere XLA's own convs).

``run`` also evaluates the dense graph with 0/1 masks multiplied into unit outputs (the
"hard-masked network" that a compact model must equal) when given ``masks`` and no cuts.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.graph.groups import Analysis
from soft_prune_jax.graph.ir import Lit
from soft_prune_jax.ops import fast_conv

_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


class CompactError(RuntimeError):
    """The compact replay of an equation did not produce the planned shape."""


def alive_of(analysis: Analysis, plans: Mapping) -> np.ndarray:
    """Per channel label: False where a group's plan (anything with ``kept`` positions) drops it."""
    alive = np.ones(int(analysis.labels.max()) + 1 if len(analysis.labels) else 0, bool)
    for grp in analysis.groups:
        p = plans.get(grp.name)
        if p is None:
            continue
        dropped = np.ones(grp.size, bool)
        dropped[p.kept] = False
        alive[grp.labels[dropped]] = False
    return alive


def kept_indices(analysis: Analysis, alive: np.ndarray) -> dict:
    """(slot, axis) -> sorted kept indices, for every axis that loses a channel."""
    out = {}
    for key, (off, n) in analysis.slot_axes.items():
        a = alive[analysis.labels[off : off + n]]
        if not a.all():
            out[key] = np.flatnonzero(a)
    return out


def take(value, kept: Mapping, slot, ndim: int):
    for ax in range(ndim):
        idx = kept.get((slot, ax))
        if idx is not None:
            value = (
                np.take(value, idx, axis=ax)
                if isinstance(value, np.ndarray)
                else jnp.take(value, jnp.asarray(idx, jnp.int32), axis=ax)
            )
    return value


def folded_outputs(analysis: Analysis) -> list:
    """Outputs of the folded (variable-only, evaluated once) equations, in program order."""
    return [o for e in analysis.graph.eqns if e.index in analysis.fold for o in e.outs]


def sliced(analysis: Analysis, leaves, consts: Mapping, kept: Mapping) -> tuple[list, dict]:
    """(the variable leaves cut to ``kept``, {folded output: its cut value}) as ``run`` takes them."""
    g = analysis.graph

    def cut(value, vid):
        return value if _is_key(value) else take(np.asarray(value), kept, vid, np.ndim(value))

    leaves = [cut(leaf, vid) for vid, leaf in zip(g.variable_ids, leaves)]
    return leaves, {o: cut(consts[o], o) for o in folded_outputs(analysis)}


def constant_values(analysis: Analysis, leaves) -> dict:
    """Every variable-only value, computed concretely from the full variable leaves (one jit:
    eager dispatch would compile every small op on its own)."""
    g = analysis.graph
    eqns = [e for e in g.eqns if not any(o in analysis.live for o in e.outs)]
    keep = [o for e in eqns for o in e.outs]

    def evaluate(leaves):
        env = dict(zip(g.variable_ids, leaves))
        env.update(g.consts)
        for e in eqns:
            ins = [a.value if isinstance(a, Lit) else env[a] for a in e.ins]
            outs = e.prim.bind(*ins, **e.params)
            for o, v in zip(e.outs, outs if e.prim.multiple_results else [outs]):
                env[o] = v
        return [env[o] for o in keep]

    values = jax.jit(evaluate)(list(leaves)) if eqns else []
    env = {vid: leaf for vid, leaf in zip(g.variable_ids, leaves)}
    env.update(g.consts)
    env.update({o: v if _is_key(v) else np.asarray(v) for o, v in zip(keep, values)})
    return env


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _read_of(kept: Mapping, use, vid, ndim: int) -> dict:
    """A reader's own kept channels of value ``vid`` as positions in the value as computed: the value
    is whole in an evaluation cut, and may be cut too in a training replay (``compact.trainable``)."""
    out = {}
    for ax in range(ndim):
        mine, have = kept.get((use, ax)), kept.get((vid, ax))
        if mine is not None and (have is None or len(have) != len(mine)):
            out[(use, ax)] = mine if have is None else np.searchsorted(have, mine)
    return out


def compact_shape(analysis: Analysis, kept: Mapping, slot) -> tuple:
    g = analysis.graph
    vid = slot if not isinstance(slot, tuple) else g.eqns[slot[1]].ins[slot[2]]
    return tuple(len(kept[(slot, ax)]) if (slot, ax) in kept else d for ax, d in enumerate(g.shapes[vid]))


def _is_cut(g, e, ins, expected) -> bool:
    """Whether any operand or output of ``e`` lost channels (else it is re-bound exactly as traced)."""
    if any(tuple(shape) != g.shapes[o] for o, shape in zip(e.outs, expected)):
        return True
    return any(not isinstance(a, Lit) and tuple(np.shape(v)) != g.shapes[a] for a, v in zip(e.ins, ins))


def _only_outputs_cut(g, e, ins, expected) -> bool:
    """Whether ``e`` reads every operand whole but one of its outputs loses channels."""
    if all(tuple(shape) == g.shapes[o] for o, shape in zip(e.outs, expected)):
        return False
    return all(isinstance(a, Lit) or tuple(np.shape(v)) == g.shapes[a] for a, v in zip(e.ins, ins))


def _params(e, ins, expected, full_in_shape, in_kept, out_kept):
    """The traced parameters with the shape-bearing ones updated for the cut; every other parameter
    is kept as traced (a transposing reshape's ``dimensions`` included: the rules stop its axes).
    in_kept / out_kept: per axis of the first operand / output, its kept indices (None: uncut)."""
    p = dict(e.params)
    name = e.name
    if name == "reshape":
        p["new_sizes"] = expected[0]
    elif name == "broadcast_in_dim":
        p["shape"] = expected[0]
    elif name == "conv_general_dilated" and p["feature_group_count"] > 1:
        dn = p["dimension_numbers"]
        if np.shape(ins[1])[dn.rhs_spec[1]] == 1:  # depthwise: one group per (kept) input channel
            p["feature_group_count"] = int(np.shape(ins[0])[dn.lhs_spec[1]])
    elif name == "split":
        p["sizes"] = tuple(s[p["axis"]] for s in expected)
    elif name == "slice":  # unit-stride on a cut axis (the rules stop strided ones): count the kept
        bounds = [
            (a, b) if k is None else (int(np.searchsorted(k, a)), int(np.searchsorted(k, b)))
            for a, b, k in zip(p["start_indices"], p["limit_indices"], in_kept)
        ]
        p["start_indices"], p["limit_indices"] = tuple(a for a, _ in bounds), tuple(b for _, b in bounds)
    elif name == "pad":  # end padding of a cut axis: the kept padded indices before and after the input's
        p["padding_config"] = tuple(
            c if k is None else (int(np.searchsorted(k, c[0])), int(len(k) - np.searchsorted(k, c[0] + n)), 0)
            for c, k, n in zip(p["padding_config"], out_kept, full_in_shape)
        )
    return p


def _kept_axes(analysis: Analysis, kept: Mapping, e) -> tuple[list, list]:
    """Per axis of ``e``'s first operand (as this equation reads it) and of its first output: the
    kept indices, None where the axis is not cut."""
    g = analysis.graph
    first = e.ins[0] if e.ins and not isinstance(e.ins[0], Lit) else None
    slot = analysis.split_uses.get((e.index, 0), first)
    in_kept = [kept.get((slot, ax)) for ax in range(len(g.shapes[first]))] if first is not None else []
    out_kept = [kept.get((e.outs[0], ax)) for ax in range(len(g.shapes[e.outs[0]]))] if e.outs else []
    return in_kept, out_kept


def _plain_conv(e, lhs, rhs) -> bool:
    p = e.params
    dn = p["dimension_numbers"]
    return (
        (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == _NHWC
        and p["feature_group_count"] == 1
        and p.get("batch_group_count", 1) == 1
        and tuple(p["lhs_dilation"]) == (1, 1)
        and tuple(p["rhs_dilation"]) == (1, 1)
        and p.get("preferred_element_type") is None
        and lhs.dtype == rhs.dtype
        and np.ndim(lhs) == 4
    )


def run(
    analysis: Analysis,
    leaves,
    inputs,
    *,
    kept: Optional[Mapping] = None,
    folded: Optional[Mapping] = None,
    masks: Optional[Mapping] = None,
    formulation: Optional[str] = "auto",
) -> list:
    """The graph's outputs from (already sliced) variable ``leaves`` and model ``inputs``.

    kept: (slot, axis) -> kept indices (``kept_indices``); folded: value id -> sliced value of every
    output of a folded equation; masks: unit output value id -> 0/1 array broadcastable to it.
    formulation: conv formulation for plain NHWC convs (None = re-bind the traced primitive).
    """
    g = analysis.graph
    kept = kept or {}
    masks = masks or {}
    env = dict(zip(g.variable_ids, leaves))
    for vid, c in g.consts.items():
        env[vid] = take(c, kept, vid, np.ndim(c))
    env.update(zip(g.input_ids, inputs))

    def read(e, j):
        a = e.ins[j]
        if isinstance(a, Lit):
            return a.value
        v = env[a]
        use = analysis.split_uses.get((e.index, j))
        if use is not None:
            v = take(v, _read_of(kept, use, a, len(g.shapes[a])), use, len(g.shapes[a]))
        return v

    for e in g.eqns:
        if folded is not None and e.index in analysis.fold:
            for o in e.outs:
                env[o] = folded[o]
            continue
        ins = [read(e, j) for j in range(len(e.ins))]
        expected = [compact_shape(analysis, kept, o) for o in e.outs]
        full_in = g.shapes[e.ins[0]] if e.ins and not isinstance(e.ins[0], Lit) else ()
        if e.name == "conv_general_dilated" and formulation is not None and _plain_conv(e, ins[0], ins[1]):
            p = e.params
            outs = [
                fast_conv.conv2d(
                    ins[0], ins[1], tuple(p["window_strides"]), tuple(map(tuple, p["padding"])), formulation
                )
            ]
        else:
            if _is_cut(g, e, ins, expected):
                params = _params(e, ins, expected, full_in, *_kept_axes(analysis, kept, e))
            else:
                params = e.params
            res = e.prim.bind(*ins, **params)
            outs = list(res) if e.prim.multiple_results else [res]
            if _only_outputs_cut(g, e, ins, expected) and any(np.shape(v) != s for v, s in zip(outs, expected)):
                # Nothing cut goes in, a cut comes out, and the parameters cannot say so (random bits of an
                # activation's shape): the full value's kept channels, the dense model's very numbers.
                res = e.prim.bind(*ins, **e.params)
                full = list(res) if e.prim.multiple_results else [res]
                outs = [take(v, kept, o, np.ndim(v)) for o, v in zip(e.outs, full)]
        for o, v, shape in zip(e.outs, outs, expected):
            if tuple(np.shape(v)) != tuple(shape):
                raise CompactError(
                    f"{e.describe()}: the compact replay gave shape {tuple(np.shape(v))}, the plan "
                    f"expects {tuple(shape)}; this primitive's parameters cannot follow pruned channels"
                )
            if o in masks:
                v = v * masks[o].astype(v.dtype)
            env[o] = v
    return [env[o] for o in g.output_ids]


def unit_masks(analysis: Analysis, alive: np.ndarray) -> dict:
    """0/1 arrays for every unit output, broadcastable to it: the group's alive channels."""
    g = analysis.graph
    out = {}
    for u in analysis.units:
        lab = analysis.slot_labels(u.out, u.axis)
        shape = [1] * len(g.shapes[u.out])
        shape[u.axis] = len(lab)
        out[u.out] = jnp.asarray(alive[lab].astype(np.float32).reshape(shape))
    return out
