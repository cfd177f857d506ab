"""Operation-aware units recognised from the algebra of batch normalisation, and exact zeros.

A unit is a per-channel affine chain on an activation that starts by subtracting a vector computed
from the variables alone (the running mean) and multiplies by a variable-only vector built with
``rsqrt`` (or divides by one built with ``sqrt``) -- what ``nn.BatchNorm``, ``nnx.BatchNorm`` and a
hand-written BN emit in evaluation mode -- whose result goes (through dtype casts only) into
``max(., 0)``: a ReLU. The class that produced it does not matter. A BN whose output meets a
residual add before its ReLU is no unit: the add ends the affine chain. For a unit

    y = A * (x - mean) + beta,  A = gamma / sqrt(var + eps)  =>  gamma = A * sqrt(var + eps)

so its SCP parameters (gamma, beta) are read off the concrete chain (``gamma_beta``), whatever
order the chain multiplies in. Folded BNs (x * a + b, no mean subtraction) are not recognised.

``zero_values``: the values that are exactly 0 on a channel whenever every unit of that channel's
group drops it (the unit outputs, and what follows from them through zero-preserving ops, rules'
``ZERO_*`` tables). Dropping a summed-away channel is exact only where such a value is summed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from soft_prune_jax.graph import rules
from soft_prune_jax.graph.ir import Graph, Lit

_PASS = frozenset({"convert_element_type", "copy", "copy_p"})
_AFFINE = frozenset({"add", "sub", "mul", "div"})
_CARRY = frozenset({"reshape", "broadcast_in_dim", "convert_element_type", "squeeze", "expand_dims", "copy"})


@dataclasses.dataclass
class Unit:
    name: str  # the BN's path ('/'-joined, collection and leaf dropped), e.g. 'block0/bn1'
    relu: int  # index of the ReLU equation
    out: int  # its output value: what the unit's mask multiplies
    axis: int  # channel axis of ``out``
    chain: list  # [(op name, vector operand (value id or Lit), activation is lhs)], first op = mean subtraction
    mean: int  # value id of the mean vector operand
    norm: int  # value id of var + eps (the argument of the rsqrt / sqrt)
    mean_leaf: Optional[int] = None  # the variable leaf holding the mean, if traceable
    read: Optional[tuple[int, int]] = None  # (equation, operand) where the chain reads its activation


def live_values(g: Graph) -> set:
    """Values that depend on the model's inputs (the rest is computed from variables alone)."""
    live = set(g.input_ids)
    for e in g.eqns:
        if any(not isinstance(a, Lit) and a in live for a in e.ins):
            live.update(e.outs)
    return live


def is_zero_constant(g: Graph, a) -> bool:
    if isinstance(a, Lit):
        return np.all(np.asarray(a.value) == 0)
    if a in g.consts:
        return bool(np.all(np.asarray(g.consts[a]) == 0))
    e = g.producer.get(a)
    if e is not None and e.name in ("broadcast_in_dim", "convert_element_type", "reshape") and len(e.ins) == 1:
        return is_zero_constant(g, e.ins[0])
    return False


def _vector_axis(g: Graph, a, shape) -> Optional[int]:
    """-1 for a scalar-like operand, the channel axis for a per-channel vector, None otherwise."""
    vshape = () if isinstance(a, Lit) else g.shapes[a]
    if all(d == 1 for d in vshape):
        return -1
    if len(vshape) != len(shape):
        return None
    axes = [ax for ax, d in enumerate(vshape) if d != 1]
    if len(axes) == 1 and vshape[axes[0]] == shape[axes[0]]:
        return axes[0]
    return None


def _normalizer(g: Graph, vid, live) -> Optional[tuple[str, int]]:
    """(rsqrt|sqrt, its operand) found in the variable-only derivation of ``vid``."""
    seen, todo = set(), [vid]
    while todo:
        v = todo.pop()
        if isinstance(v, Lit) or v in seen or v in live:
            continue
        seen.add(v)
        e = g.producer.get(v)
        if e is None:
            continue
        if e.name in ("rsqrt", "sqrt") and not isinstance(e.ins[0], Lit):
            return e.name, e.ins[0]
        todo.extend(a for a in e.ins if not isinstance(a, Lit))
    return None


def _leaf(g: Graph, vid) -> Optional[int]:
    while not isinstance(vid, Lit):
        if g.path_of(vid) is not None:
            return vid
        e = g.producer.get(vid)
        if e is None or e.name not in _CARRY:
            return None
        vid = e.ins[0]
    return None


def find_units(g: Graph, live: set, strip: int = 0) -> list[Unit]:
    """Every BN -> ReLU unit, in program order. ``strip``: leading path entries to drop (collection)."""
    units = []
    for e in g.eqns:
        if e.name != "max" or len(e.ins) != 2:
            continue
        xs = [a for a in e.ins if not isinstance(a, Lit) and a in live]
        others = [a for a in e.ins if isinstance(a, Lit) or a not in live]
        if len(xs) != 1 or len(others) != 1 or not is_zero_constant(g, others[0]):
            continue
        cur = xs[0]
        while (p := g.producer.get(cur)) is not None and p.name in _PASS and len(g.uses.get(cur, [])) == 1:
            cur = p.ins[0]
        shape = g.shapes[cur]
        ops = []  # collected backwards from the ReLU
        axis = None
        while (p := g.producer.get(cur)) is not None and p.name in _AFFINE and len(g.uses.get(cur, [])) == 1:
            act = [j for j, a in enumerate(p.ins) if not isinstance(a, Lit) and a in live]
            if len(act) != 1:
                break
            j = act[0]
            vec = p.ins[1 - j]
            vax = _vector_axis(g, vec, shape)
            if vax is None or (vax >= 0 and axis is not None and vax != axis) or g.shapes[p.ins[j]] != shape:
                break
            if p.name == "div" and j == 1:
                break
            if vax >= 0:
                axis = vax
            ops.append((p.name, vec, j == 0, (p.index, j)))
            cur = p.ins[j]
        ops.reverse()
        found = None
        for i, (op, vec, lhs, _) in enumerate(ops):
            if op != "sub" or not lhs or isinstance(vec, Lit) or _vector_axis(g, vec, shape) in (None, -1):
                continue
            for op2, vec2, _lhs, _ in ops[i + 1 :]:
                if isinstance(vec2, Lit) or op2 not in ("mul", "div"):
                    continue
                norm = _normalizer(g, vec2, live)
                if norm and ((op2 == "mul" and norm[0] == "rsqrt") or (op2 == "div" and norm[0] == "sqrt")):
                    found = (i, vec, norm[1])
                    break
            if found:
                break
        if not found or axis is None:
            continue
        i, mean, norm = found
        leaf = _leaf(g, mean)
        path = g.path_of(leaf) if leaf is not None else None
        name = "/".join(path[strip:-1]) if path and len(path) > strip + 1 else f"unit@{e.index}"
        chain = [(op, vec, lhs) for op, vec, lhs, _ in ops[i:]]
        units.append(Unit(name, e.index, e.outs[0], axis, chain, mean, norm, leaf, read=ops[0][3]))
    return units


def gamma_beta(unit: Unit, value: Callable[[object], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The unit's effective (gamma, beta) per channel, from concrete variable-only values."""

    def vec(a):
        v = np.asarray(a.value if isinstance(a, Lit) else value(a), np.float64)
        return v.reshape(-1) if v.size > 1 else v.reshape(())

    A, B = np.float64(1.0), np.float64(0.0)
    for op, v, lhs in unit.chain:
        v = vec(v)
        if op == "mul":
            A, B = A * v, B * v
        elif op == "div":
            A, B = A / v, B / v
        elif op == "add":
            B = B + v
        elif lhs:  # x - v
            B = B - v
        else:  # v - x
            A, B = -A, v - B
    mean, norm = vec(unit.mean), vec(unit.norm)
    gamma = A * np.sqrt(norm)
    beta = A * mean + B
    n = max(np.size(gamma), np.size(beta), np.size(mean))
    return (np.broadcast_to(gamma, (n,)).astype(np.float32), np.broadcast_to(beta, (n,)).astype(np.float32))


def _constant_scalar(g: Graph, a) -> Optional[float]:
    if isinstance(a, Lit):
        v = np.asarray(a.value)
    elif a in g.consts:
        v = np.asarray(g.consts[a])
    else:
        e = g.producer.get(a)
        if e is not None and e.name in ("broadcast_in_dim", "convert_element_type", "reshape") and len(e.ins) == 1:
            return _constant_scalar(g, e.ins[0])
        return None
    return float(v.reshape(-1)[0]) if v.size >= 1 and np.all(v == v.reshape(-1)[0]) else None


def _keeps_zero(g: Graph, e, act) -> bool:
    """max(x, c <= 0), min(x, c >= 0) and clamp(lo <= 0, x, hi >= 0) map an exact 0 to 0."""
    others = [a for a in e.ins if a is not act]
    values = [_constant_scalar(g, a) for a in others]
    if any(v is None for v in values):
        return False
    if e.name == "max":
        return all(v <= 0 for v in values)
    if e.name == "min":
        return all(v >= 0 for v in values)
    return e.ins[1] is act and values[0] <= 0 <= values[1]


def zero_values(g: Graph, live: set, units: list[Unit]) -> set:
    """Values that are exactly 0 on every channel their group drops (see the module docstring)."""
    zero = set()
    unit_outs = {u.out for u in units}
    for e in g.eqns:
        if not e.outs or e.outs[0] not in live:
            continue
        if e.outs[0] in unit_outs:
            zero.add(e.outs[0])
            continue
        acts = [a for a in e.ins if not isinstance(a, Lit) and a in live]
        name = e.name
        ok = False
        if name in rules.ZERO_UNARY:
            ok = bool(acts) and e.ins[0] in zero and (name != "pad" or is_zero_constant(g, e.ins[1]))
        elif name in rules.ZERO_IF_ANY:
            ok = any(a in zero for a in acts)
        elif name in rules.ZERO_IF_FIRST:
            ok = not isinstance(e.ins[0], Lit) and e.ins[0] in zero
        elif name in ("max", "min", "clamp") and len(acts) == 1 and acts[0] in zero and _keeps_zero(g, e, acts[0]):
            ok = True  # ReLU6 and friends: min(x, 6), max(x, -1), clamp(0, x, 6) keep an exact 0
        elif name in rules.ZERO_IF_ALL:
            cases = e.ins[1:] if name == "select_n" else e.ins
            ok = bool(acts) and all((not isinstance(a, Lit) and a in zero) or is_zero_constant(g, a) for a in cases)
        elif name == "dot_general" and not e.params["dimension_numbers"][0][0]:
            ok = any(a in zero for a in acts)  # no contraction: a product, every operand axis kept
        elif name == "conv_general_dilated":
            p = e.params
            rhs_in = g.shapes[e.ins[1]][p["dimension_numbers"].rhs_spec[1]]
            ok = p["feature_group_count"] > 1 and rhs_in == 1 and e.ins[0] in zero
        if ok:
            zero.update(e.outs)
    return zero
