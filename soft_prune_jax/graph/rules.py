"""Per-primitive channel rules, all in one table: which axes of an equation's operands and outputs
are the same dimension, index for index (Shardy's "factors"; Torch-Pruning's index mappings).

A rule gets the equation and a ``Linker`` and says, for every axis it understands:
  * ``link(a, ax, b, bx, ia, ib)``: index ``ia[i]`` of (a, ax) is the same channel as ``ib[i]`` of
    (b, bx) (identity when omitted) -- elementwise ops, broadcasts, transposes, convolution in/out
    pairs of depthwise convs, concatenation offsets, flatten strides;
  * ``consume(eqn, [(slot, axis), ...], operands)``: the axis is summed away (a conv's input
    channels, a dot's contracting dimension, reduce_sum): dropping a channel there is exact only
    if one of ``operands`` is exactly zero on it (``units`` decides which values are);
  * ``stop(slot, axis, eqn)``: the rule cannot follow this axis (grouped convs, sorting along it,
    an unknown primitive): any group touching it is left whole, and the group records the equation.
An axis a rule neither links nor stops simply starts or ends there (a conv's output channels are
new; its kernel's spatial axes belong to nobody). Slots are value ids, or ("use", eqn, operand)
where a shared value is read by one consumer with its own channel selection (see ``groups``).
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from soft_prune_jax.graph.ir import Eqn, Lit

# Same-shape elementwise primitives (scalars broadcast; size-1 axes broadcast too).
ELEMENTWISE = frozenset(
    """
add sub mul div rem pow max min neg abs sign floor ceil round exp exp2 log log1p expm1 tanh logistic sin cos
tan asin acos atan atan2 sinh cosh asinh acosh atanh sqrt rsqrt cbrt integer_pow square reciprocal erf erfc
erf_inv lgamma digamma is_finite not and or xor eq ne lt le gt ge convert_element_type copy copy_p select_n
clamp nextafter reduce_precision real imag conj add_any stop_gradient square_p shift_left shift_right_logical
shift_right_arithmetic population_count clz imag_p
""".split()  # noqa: SIM905 - a word list reads best as words
)
# Primitives whose output keeps its input's values per channel and whose params never carry a
# channel-dependent shape (the interpreter re-binds them as they are).
REDUCE_SUM = frozenset({"reduce_sum"})
REDUCE_OTHER = frozenset(
    {"reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor", "argmax", "argmin"}
)
CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})


class Linker(Protocol):
    """What a rule talks to: the interface ``groups._Linker`` implements (a Protocol, so rules stay
    independent of how groups are stored)."""

    def slot(self, eqn: Eqn, j: int):  # operand j's slot
        ...

    def shape(self, slot) -> tuple: ...

    def link(self, a, ax, b, bx, ia=None, ib=None): ...

    def stop(self, slot, ax, eqn: Eqn): ...

    def consume(self, eqn: Eqn, axes, operands): ...

    def mark_feature(self, slot, ax):  # a conv's or dense layer's output features (see ``reshape``)
        ...

    def is_feature(self, slot, ax) -> bool: ...


def _operands(e: Eqn, L: Linker):
    return [(j, L.slot(e, j)) for j, a in enumerate(e.ins) if not isinstance(a, Lit)]


def stop_all(e: Eqn, L: Linker):
    for _, s in _operands(e, L):
        for ax in range(len(L.shape(s))):
            L.stop(s, ax, e)
    for o in e.outs:
        for ax in range(len(L.shape(o))):
            L.stop(o, ax, e)


def elementwise(e: Eqn, L: Linker):
    out = e.outs[0]
    oshape = L.shape(out)
    for _, s in _operands(e, L):
        shape = L.shape(s)
        if len(shape) == 0:
            continue
        if len(shape) != len(oshape):
            return stop_all(e, L)
        for ax, (d, od) in enumerate(zip(shape, oshape)):
            if d == od:
                L.link(s, ax, out, ax)
    for o in e.outs[1:]:
        for ax in range(len(oshape)):
            L.link(out, ax, o, ax)


def broadcast_in_dim(e: Eqn, L: Linker):
    s, out = L.slot(e, 0), e.outs[0]
    shape, oshape = L.shape(s), L.shape(out)
    for ax, oax in enumerate(e.params["broadcast_dimensions"]):
        if shape[ax] == oshape[oax]:
            L.link(s, ax, out, oax)


def transpose(e: Eqn, L: Linker):
    s, out = L.slot(e, 0), e.outs[0]
    for oax, ax in enumerate(e.params["permutation"]):
        L.link(s, ax, out, oax)


def squeeze(e: Eqn, L: Linker):
    s, out = L.slot(e, 0), e.outs[0]
    dims = {d % len(L.shape(s)) for d in e.params["dimensions"]}
    kept = [ax for ax in range(len(L.shape(s))) if ax not in dims]
    for oax, ax in enumerate(kept):
        L.link(s, ax, out, oax)


def expand_dims(e: Eqn, L: Linker):
    s, out = L.slot(e, 0), e.outs[0]
    dims = set(e.params["dimensions"])
    oaxes = [ax for ax in range(len(L.shape(out))) if ax not in dims]
    for ax, oax in enumerate(oaxes):
        L.link(s, ax, out, oax)


def _factor_blocks(shape, oshape):
    """Contiguous blocks (in axes, out axes) of equal products, size-1 axes dropped."""
    ins = [ax for ax, d in enumerate(shape) if d != 1]
    outs = [ax for ax, d in enumerate(oshape) if d != 1]
    blocks, i, o = [], 0, 0
    while i < len(ins) and o < len(outs):
        bi, bo = [ins[i]], [outs[o]]
        pi, po = shape[ins[i]], oshape[outs[o]]
        i, o = i + 1, o + 1
        while pi != po:
            if pi < po:
                if i >= len(ins):
                    return None
                bi.append(ins[i])
                pi *= shape[ins[i]]
                i += 1
            else:
                if o >= len(outs):
                    return None
                bo.append(outs[o])
                po *= oshape[outs[o]]
                o += 1
        blocks.append((bi, bo))
    if i != len(ins) or o != len(outs):
        return None
    return blocks


def reshape(e: Eqn, L: Linker):
    """Merges and splits of contiguous axes. A merge follows one factor with a strided map: the
    factor that carries layer features (NHWC flatten: channel c of (H, W, C) is rows {p * C + c};
    NCHW flatten: rows {c * H * W + p}), else the minor-most one; the other merged factors stop."""
    if e.params.get("dimensions") is not None:
        return stop_all(e, L)
    s, out = L.slot(e, 0), e.outs[0]
    shape, oshape = L.shape(s), L.shape(out)
    blocks = _factor_blocks(shape, oshape)
    if blocks is None:
        return stop_all(e, L)
    for bi, bo in blocks:
        if len(bi) == 1 and len(bo) == 1:
            L.link(s, bi[0], out, bo[0])
        elif len(bo) == 1:  # merge: out index k holds in-factor (k // inner) % size of the followed axis
            features = [ax for ax in bi if L.is_feature(s, ax)]
            followed = features[-1] if features else bi[-1]
            n = shape[followed]
            inner = int(np.prod([shape[ax] for ax in bi if ax > followed]))
            k = np.arange(oshape[bo[0]])
            L.link(s, followed, out, bo[0], (k // inner) % n, k)
            for ax in bi:
                if ax != followed:
                    L.stop(s, ax, e)
        elif len(bi) == 1:  # split: the minor-most out factor is the in index modulo its size
            minor, n = bo[-1], oshape[bo[-1]]
            total = shape[bi[0]]
            k = np.arange(total)
            L.link(s, bi[0], out, minor, k, k % n)
            for ax in bo[:-1]:
                L.stop(out, ax, e)
        else:
            for ax in bi:
                L.stop(s, ax, e)
            for ax in bo:
                L.stop(out, ax, e)


def reduce_sum(e: Eqn, L: Linker):
    s, out = L.slot(e, 0), e.outs[0]
    axes = {a % len(L.shape(s)) for a in e.params["axes"]}
    kept = [ax for ax in range(len(L.shape(s))) if ax not in axes]
    for oax, ax in enumerate(kept):
        L.link(s, ax, out, oax)
    L.consume(e, [(s, ax) for ax in sorted(axes)], [s])


def reduce_other(e: Eqn, L: Linker):
    s, out = L.slot(e, 0), e.outs[0]
    axes = {a % len(L.shape(s)) for a in e.params["axes"]}
    kept = [ax for ax in range(len(L.shape(s))) if ax not in axes]
    for oax, ax in enumerate(kept):
        L.link(s, ax, out, oax)
    for ax in axes:
        L.stop(s, ax, e)


def cumulative(e: Eqn, L: Linker):
    s, out = L.slot(e, 0), e.outs[0]
    for ax in range(len(L.shape(s))):
        L.link(s, ax, out, ax)
    L.stop(s, e.params["axis"] % len(L.shape(s)), e)


def reduce_window(e: Eqn, L: Linker):
    """Pooling: axes with a 1-wide, unstrided, unpadded window keep their channels."""
    s, out = L.slot(e, 0), e.outs[0]
    p = e.params
    for ax in range(len(L.shape(s))):
        plain = (
            p["window_dimensions"][ax] == 1
            and p["window_strides"][ax] == 1
            and tuple(p["padding"][ax]) == (0, 0)
            and p.get("base_dilation", (1,) * 8)[ax] == 1
            and p.get("window_dilation", (1,) * 8)[ax] == 1
        )
        if plain:
            L.link(s, ax, out, ax)
        else:
            L.stop(s, ax, e)
            L.stop(out, ax, e)


def conv(e: Eqn, L: Linker):
    """conv_general_dilated: input and kernel channels are summed (one group); depthwise convs tie
    output channel o to input channel o // multiplier; grouped convs with several channels per
    group stop both channel axes (a channel cannot leave one group alone)."""
    p = e.params
    lhs, rhs, out = L.slot(e, 0), L.slot(e, 1), e.outs[0]
    dn = p["dimension_numbers"]
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    for ax in lspec[2:]:
        L.stop(lhs, ax, e)
    for ax in rspec[2:]:
        L.stop(rhs, ax, e)
    for ax in ospec[2:]:
        L.stop(out, ax, e)
    if p.get("batch_group_count", 1) != 1:
        return stop_all(e, L)
    L.link(lhs, lspec[0], out, ospec[0])
    groups = p["feature_group_count"]
    cin, cout = L.shape(lhs)[lspec[1]], L.shape(rhs)[rspec[0]]
    k = L.shape(rhs)[rspec[1]]
    L.link(rhs, rspec[0], out, ospec[1])
    L.mark_feature(out, ospec[1])
    if groups == 1:
        L.link(lhs, lspec[1], rhs, rspec[1])
        L.consume(e, [(lhs, lspec[1]), (rhs, rspec[1])], [lhs])
    elif k == 1 and cin == groups:  # depthwise with channel multiplier cout // cin
        m = cout // cin
        o = np.arange(cout)
        L.link(lhs, lspec[1], out, ospec[1], o // m, o)
    else:
        L.stop(lhs, lspec[1], e)
        L.stop(rhs, rspec[1], e)
        L.stop(rhs, rspec[0], e)
        L.stop(out, ospec[1], e)


def dot_general(e: Eqn, L: Linker):
    lhs, rhs, out = L.slot(e, 0), L.slot(e, 1), e.outs[0]
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    for a, b in zip(lc, rc):
        L.link(lhs, a, rhs, b)
    if lc:
        L.consume(e, [(lhs, a) for a in lc] + [(rhs, b) for b in rc], [lhs, rhs])
    oax = 0
    for a, b in zip(lb, rb):
        L.link(lhs, a, out, oax)
        L.link(rhs, b, out, oax)
        oax += 1
    for ax in range(len(L.shape(lhs))):
        if ax not in lc and ax not in lb:
            L.link(lhs, ax, out, oax)
            oax += 1
    for ax in range(len(L.shape(rhs))):
        if ax not in rc and ax not in rb:
            L.link(rhs, ax, out, oax)
            L.mark_feature(out, oax)
            oax += 1


def concatenate(e: Eqn, L: Linker):
    out = e.outs[0]
    d = e.params["dimension"]
    offset = 0
    for _, s in _operands(e, L):
        shape = L.shape(s)
        for ax in range(len(shape)):
            if ax == d:
                n = shape[ax]
                L.link(s, ax, out, ax, np.arange(n), offset + np.arange(n))
            else:
                L.link(s, ax, out, ax)
        offset += shape[d]


def stack(e: Eqn, L: Linker):
    """A new axis ``axis`` of the operands side by side; every other axis is each operand's own."""
    out, d = e.outs[0], e.params["axis"]
    for _, s in _operands(e, L):
        for ax in range(len(L.shape(s))):
            L.link(s, ax, out, ax if ax < d else ax + 1)


def split(e: Eqn, L: Linker):
    s = L.slot(e, 0)
    d = e.params["axis"]
    offset = 0
    for o in e.outs:
        oshape = L.shape(o)
        for ax in range(len(oshape)):
            if ax == d:
                n = oshape[ax]
                L.link(s, ax, o, ax, offset + np.arange(n), np.arange(n))
            else:
                L.link(s, ax, o, ax)
        offset += oshape[d]


def pad(e: Eqn, L: Linker):
    """An axis padded at its ends keeps its channels at an offset (index i goes to lo + i; the padded
    indices are new); interior or negative (cropping) padding stops the axis."""
    s, out = L.slot(e, 0), e.outs[0]
    for ax, (lo, hi, interior) in enumerate(e.params["padding_config"]):
        n = L.shape(s)[ax]
        if interior == 0 and lo >= 0 and hi >= 0:
            L.link(s, ax, out, ax, np.arange(n), lo + np.arange(n))
        else:
            L.stop(s, ax, e)
            L.stop(out, ax, e)


def slice_(e: Eqn, L: Linker):
    """A unit-stride slice keeps the channels ``start .. limit`` at an offset (a GhostNet module's
    ``[..., :out]``, a roll, edge padding); the rest of the axis is simply not read. A strided slice
    stops the axis: after a cut its kept channels need not lie on one stride."""
    s, out = L.slot(e, 0), e.outs[0]
    shape = L.shape(s)
    strides = e.params.get("strides") or (1,) * len(shape)
    for ax, (a, b, st) in enumerate(zip(e.params["start_indices"], e.params["limit_indices"], strides)):
        if st == 1:
            L.link(s, ax, out, ax, np.arange(a, b), np.arange(b - a))
        else:
            L.stop(s, ax, e)
            L.stop(out, ax, e)


def rev(e: Eqn, L: Linker):
    """``jnp.flip``: a reversed axis maps index i to n - 1 - i (reversing the kept channels of the
    compact array puts them in the same order)."""
    s, out = L.slot(e, 0), e.outs[0]
    dims = {d % len(L.shape(s)) for d in e.params["dimensions"]}
    for ax, n in enumerate(L.shape(s)):
        k = np.arange(n)
        L.link(s, ax, out, ax, k, n - 1 - k if ax in dims else k)


def sort(e: Eqn, L: Linker):
    d = e.params["dimension"]
    for _, s in _operands(e, L):
        L.stop(s, d, e)
    elementwise(e, L)


def collective(e: Eqn, L: Linker):
    """psum / pmax / pmin over a mapped axis (a BatchNorm's synchronised batch statistics in training):
    every output is its operand, channel for channel."""
    for (_, s), o in zip(_operands(e, L), e.outs):
        for ax in range(len(L.shape(o))):
            L.link(s, ax, o, ax)


def no_links(e: Eqn, L: Linker):
    """Creation ops (iota, rng): fresh axes, nothing to follow."""


RULES: dict[str, Callable[[Eqn, Linker], None]] = {name: elementwise for name in ELEMENTWISE}
RULES.update({name: reduce_sum for name in REDUCE_SUM})
RULES.update({name: reduce_other for name in REDUCE_OTHER})
RULES.update({name: cumulative for name in CUMULATIVE})
RULES.update(
    {
        "broadcast_in_dim": broadcast_in_dim,
        "transpose": transpose,
        "squeeze": squeeze,
        "expand_dims": expand_dims,
        "reshape": reshape,
        "reduce_window_sum": reduce_window,
        "reduce_window_max": reduce_window,
        "reduce_window_min": reduce_window,
        "conv_general_dilated": conv,
        "dot_general": dot_general,
        "concatenate": concatenate,
        "split": split,
        "stack": stack,
        "pad": pad,
        "slice": slice_,
        "rev": rev,
        "sort": sort,
        "iota": no_links,
    }
)
RULES.update({name: collective for name in ("psum", "pmax", "pmin")})


def apply_rule(e: Eqn, L: Linker) -> bool:
    """Applies the rule of ``e``; an unknown primitive stops every axis it touches. True if known."""
    rule = RULES.get(e.name)
    if rule is None:
        stop_all(e, L)
        return False
    rule(e, L)
    return True


# Zero propagation (used by ``units``): when is an output exactly 0 on a channel where its
# activation operands are 0? Unary ops with f(0) = 0 and per-channel pooling/reshaping keep zeros.
ZERO_UNARY = frozenset(
    """
neg abs sign sqrt cbrt tanh sin tan asin atan sinh asinh atanh erf expm1 log1p integer_pow square real
convert_element_type copy copy_p reduce_precision reshape transpose broadcast_in_dim squeeze expand_dims
reduce_sum reduce_max reduce_min reduce_window_sum reduce_window_max reduce_window_min cumsum cummax cummin
slice rev pad split
""".split()  # noqa: SIM905 - a word list reads best as words
)
ZERO_IF_ANY = frozenset({"mul"})  # a product is 0 where either factor is
ZERO_IF_FIRST = frozenset({"div"})
ZERO_IF_ALL = frozenset({"add", "sub", "max", "min", "add_any", "concatenate", "select_n", "clamp"})
