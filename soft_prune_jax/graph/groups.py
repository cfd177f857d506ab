"""Channel groups of a traced model: which channels of which arrays must go together.

Every (value, axis) of the flat graph gets one node per index; the rules (``rules.RULES``) join
nodes that are the same channel, and connected components (scipy) are the single channels. A group
is the set of components with the same footprint -- the same (value, axis) pairs -- so the channels
of one layer form one group even when flattening or concatenation spreads them over index maps.

Shared values. A value that several equations read, or that joins branches (a residual sum, a
concatenation), and that is not exactly zero on dropped channels is given one slot per reader
(``("use", equation, operand)``): each reader may keep its own channel selection (a gather in the
compact model), as a pre-activation block's BN-ReLU or a DenseNet layer does: the reader's group
is a *read group*. The value's own group must then keep everything. Values that are zero where
dropped (a unit's output) are not split -- all their readers drop the same channels -- except for a
BN-ReLU unit that reads one whose group is kept whole anyway (a conv -> BN -> ReLU stem whose
output is the residual stream): that read is split when it makes the unit a prunable group of its
own (``_with_reads``), and the value read then keeps everything too.

A group is prunable when it contains at least one unit (``units``), touches neither the model's
inputs nor its outputs, meets no stopped axis (an unknown primitive, a grouped conv, ...), holds
every channel of each of its units (not a part that ``jnp.split`` sent elsewhere: SCP trains one
mask per unit), and every axis it sums away (a conv's input channels, a dense layer's rows) sums a
value that is zero where dropped. Otherwise it is kept whole and ``reason`` says which equation decided that.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from soft_prune_jax.graph import rules
from soft_prune_jax.graph import units as U
from soft_prune_jax.graph.ir import Eqn, Graph, Lit

# Variable-only equations that the compact interpreter recomputes from the sliced variables (per
# channel, so slicing commutes with them); every other variable-only equation is evaluated once on
# the full variables and its result sliced (reductions over channels such as a keep-one argmin).
RECOMPUTE = rules.ELEMENTWISE | {
    "broadcast_in_dim",
    "reshape",
    "transpose",
    "squeeze",
    "expand_dims",
    "concatenate",
    "split",
    "slice",
    "pad",
}


@dataclasses.dataclass
class Member:
    path: tuple  # the variable's path, e.g. ('params', 'block0', 'conv1', 'kernel')
    axis: int
    channel: np.ndarray  # for each index of that axis, the group channel it belongs to


@dataclasses.dataclass
class Group:
    name: str
    labels: np.ndarray  # component label of each group channel, in the order of the anchor array
    members: list  # Member for every variable axis in the group
    slots: list  # every (slot, axis) in the group, intermediates included
    units: list  # the units whose outputs lie in this group
    prunable: bool
    reason: str  # why it is kept whole ('' when prunable)
    # A read group: its unit reads a shared value (a residual stream, a concatenation) through a
    # gather of its own; cutting it slices the unit's BN and its consumers, never the shared value.
    reads: bool = False

    @property
    def size(self) -> int:
        return len(self.labels)

    def positions(self, labels) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``labels`` that are channels of this group, their positions in the group). A
        unit's channels may lie in several groups (one half concatenated, the other not; such groups
        are left whole, ``_split_unit``)."""
        pos = {int(lab): k for k, lab in enumerate(self.labels)}
        mine = [(i, pos[int(x)]) for i, x in enumerate(labels) if int(x) in pos]
        idx = np.array([i for i, _ in mine], np.int64)
        return idx, np.array([k for _, k in mine], np.int64)

    def member_set(self, strip: int = 0) -> set:
        return {(m.path[strip:], m.axis) for m in self.members}


@dataclasses.dataclass
class Analysis:
    graph: Graph
    live: set
    units: list
    zero: set
    split_uses: dict  # (eqn index, operand) -> use slot
    fold: set  # indices of variable-only equations evaluated once on the full variables
    slot_axes: dict  # (slot, axis) -> (offset, size)
    labels: np.ndarray  # node -> component label
    groups: list
    strip: int

    def group(self, name: str) -> Group:
        for grp in self.groups:
            if grp.name == name:
                return grp
        raise KeyError(f"no channel group named {name!r}; groups: {', '.join(g.name for g in self.groups)}")

    def slot_labels(self, slot, axis) -> Optional[np.ndarray]:
        item = self.slot_axes.get((slot, axis))
        if item is None:
            return None
        off, n = item
        return self.labels[off : off + n]


class _Linker(rules.Linker):
    def __init__(self, g: Graph, split_uses: dict):
        self.g, self.split_uses = g, split_uses
        self.slot_axes, self.total = {}, 0
        self.src, self.dst = [], []
        self.stops, self.consumes = {}, []
        self.features = set()

    def slot(self, e: Eqn, j: int):
        return self.split_uses.get((e.index, j), e.ins[j])

    def shape(self, slot):
        if isinstance(slot, Lit):
            return np.shape(slot.value)
        if isinstance(slot, tuple):
            return self.g.shapes[self.g.eqns[slot[1]].ins[slot[2]]]
        return self.g.shapes[slot]

    def node(self, slot, ax):
        key = (slot, ax)
        if key not in self.slot_axes:
            n = self.shape(slot)[ax]
            self.slot_axes[key] = (self.total, n)
            self.total += n
        return self.slot_axes[key][0]

    def mark_feature(self, slot, ax):
        if not isinstance(slot, Lit):
            self.features.add((slot, ax))

    def is_feature(self, slot, ax) -> bool:
        return not isinstance(slot, Lit) and (slot, ax) in self.features

    def link(self, a, ax, b, bx, ia=None, ib=None):
        if isinstance(a, Lit) or isinstance(b, Lit):  # a literal is a constant: it has no channels
            return
        # Feature axes are followed forward in program order, so a later flatten knows its channels.
        if (a, ax) in self.features:
            self.features.add((b, bx))
        oa, ob = self.node(a, ax), self.node(b, bx)
        if ia is None:
            n = self.shape(a)[ax]
            if n != self.shape(b)[bx]:
                return
            ia = ib = np.arange(n)
        self.src.append(oa + np.asarray(ia))
        self.dst.append(ob + np.asarray(ib))

    def stop(self, slot, ax, e: Eqn):
        if isinstance(slot, Lit):
            return
        self.node(slot, ax)
        self.stops.setdefault((slot, ax), e.describe())

    def consume(self, e: Eqn, axes, operands):
        axes = [(slot, ax) for slot, ax in axes if not isinstance(slot, Lit)]
        for slot, ax in axes:
            self.node(slot, ax)
        self.consumes.append((e, list(axes), list(operands)))


def analyze(g: Graph, strip: int = 0) -> Analysis:
    """Units, zeros, shared-value splits, channel components and groups of ``g``."""
    live = U.live_values(g)
    units = U.find_units(g, live, strip)
    zero = U.zero_values(g, live, units)
    split_uses = _shared_uses(g, live, zero)
    fold = {e.index for e in g.eqns if not any(o in live for o in e.outs) and e.name not in RECOMPUTE}
    void = _void_values(g)
    slot_axes, labels, groups = _link(g, units, zero, split_uses, fold, strip, set(), void)
    reads = _read_candidates(g, live, zero, units, groups)
    if reads:
        split_uses, (slot_axes, labels, groups) = _with_reads(g, units, zero, split_uses, fold, strip, reads, void)
    return Analysis(g, live, units, zero, split_uses, fold, slot_axes, labels, groups, strip)


def _void_values(g: Graph) -> set:
    """Values that carry nothing to the outputs: empty arrays, and values read only by equations
    whose outputs are all void (``jnp.pad(mode="edge")`` slices an end channel of every padded-or-
    not axis and broadcasts it to an empty array). They are linked like any value -- an empty
    operand of a concatenation is still cut to the kept channels -- but are no part of a group's
    footprint, so the channels they read are not set apart from the rest of their layer."""
    outputs, void = set(g.output_ids), set()
    for e in reversed(g.eqns):
        for o in e.outs:
            uses = g.uses.get(o, [])
            empty = 0 in g.shapes[o]
            if empty or (o not in outputs and uses and all(all(x in void for x in u.outs) for u, _ in uses)):
                void.add(o)
    return void


def _shared_uses(g: Graph, live: set, zero: set) -> dict:
    """A live, non-zero value read by several equations, or a junction of branches (a residual sum,
    a concatenation): one slot per reader."""
    outputs = set(g.output_ids)
    split_uses = {}
    for vid, uses in g.uses.items():
        if vid in live and vid not in zero and (len(uses) + (vid in outputs) >= 2 or _junction(g, live, vid)):
            for e, j in uses:
                split_uses[(e.index, j)] = ("use", e.index, j)
    return split_uses


def _link(g: Graph, units, zero, split_uses, fold, strip, read_values, void) -> tuple:
    """(slot axes, component labels, groups) with the shared values split as ``split_uses`` says."""
    L = _Linker(g, split_uses)
    for e in g.eqns:
        if e.index in fold:
            continue
        rules.apply_rule(e, L)
    for vid in g.variable_ids + g.input_ids + g.output_ids:
        for ax in range(len(g.shapes[vid])):
            L.node(vid, ax)
    for vid in g.input_ids:  # a reader's own slot of a model input is still the input
        for e, j in g.uses.get(vid, []):
            if (e.index, j) in split_uses:
                for ax in range(len(g.shapes[vid])):
                    L.node(split_uses[(e.index, j)], ax)
    N = L.total
    src = np.concatenate(L.src) if L.src else np.zeros(0, np.int64)
    dst = np.concatenate(L.dst) if L.dst else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(N, N))
    _, labels = connected_components(graph, directed=False)
    groups = _groups(g, L, labels, units, zero, split_uses, strip, read_values, void)
    return L.slot_axes, labels, groups


def _unit_read(g: Graph, unit) -> Optional[tuple]:
    """(equation, operand, value): where ``unit`` reads the value its chain starts from, behind
    single-use dtype casts (a BN computing in another dtype)."""
    if unit.read is None:
        return None
    ei, j = unit.read
    vid = g.eqns[ei].ins[j]
    while (p := g.producer.get(vid)) is not None and p.name in U._PASS and len(g.uses.get(vid, [])) == 1:
        ei, j, vid = p.index, 0, p.ins[0]
    return ei, j, vid


def _read_candidates(g: Graph, live: set, zero: set, units, groups) -> dict:
    """{(equation, operand): unit} for the units that may read a shared value with their own
    selection although that value is zero where dropped (a BN-ReLU output that is also the residual
    stream or part of a concatenation): today they share its group, which is kept whole."""
    outputs = set(g.output_ids)
    whole = {id(u) for grp in groups if not grp.prunable for u in grp.units}
    found = {}
    for u in units:
        read = _unit_read(g, u)
        if read is None or id(u) not in whole:
            continue
        ei, j, vid = read
        shared = len(g.uses.get(vid, [])) + (vid in outputs) >= 2
        if vid in live and vid in zero and shared:
            found[(ei, j)] = u
    return found


def _with_reads(g: Graph, units, zero, split_uses, fold, strip, reads: dict, void) -> tuple:
    """(split uses, linked result) with each candidate read on its own slot, keeping the reads whose
    unit then forms a prunable group of its own (its output reaches only layers that sum it away);
    the value read stays whole for everyone else. A read whose group would not be prunable keeps the
    old grouping; if the kept reads still disagree after one retry, none is split."""
    for _ in range(2):
        uses = {**split_uses, **{k: ("use",) + k for k in reads}}
        values = {g.eqns[ei].ins[j] for ei, j in reads}
        result = _link(g, units, zero, uses, fold, strip, values, void)
        prunable = {id(u) for grp in result[2] if grp.prunable for u in grp.units}
        accepted = {k: u for k, u in reads.items() if id(u) in prunable}
        if accepted == reads:
            return uses, result
        reads = accepted
        if not reads:
            break
    return split_uses, _link(g, units, zero, split_uses, fold, strip, set(), void)


def _junction(g: Graph, live: set, vid) -> bool:
    """A sum or concatenation of several live branches: the built-in architectures' written
    specification (tests/test_structure_spec.py) and the SCP paper never prune such a stream, each
    reader selects its own channels of it."""
    e = g.producer.get(vid)
    return (
        e is not None
        and e.name in ("add", "add_any", "sub", "concatenate")
        and sum(1 for a in e.ins if not isinstance(a, Lit) and a in live) >= 2
    )


def _groups(g: Graph, L: _Linker, labels, units, zero, split_uses, strip, read_values, void) -> list:
    keys = list(L.slot_axes)
    index = {k: i for i, k in enumerate(keys)}
    K = len(keys)
    offsets = np.array([L.slot_axes[k][0] for k in keys], np.int64)
    sizes = np.array([L.slot_axes[k][1] for k in keys], np.int64)
    sa_of_node = np.repeat(np.arange(K), sizes)
    pair = np.unique(labels.astype(np.int64) * K + sa_of_node)
    pl, ps = pair // K, pair % K
    weights = np.random.default_rng(0).integers(1, 2**62, K, dtype=np.int64).astype(np.uint64)
    weights[[_value_of(g, k[0]) in void for k in keys]] = 0  # void values are no part of a footprint
    sig = np.zeros(labels.max() + 1 if len(labels) else 0, np.uint64)
    np.add.at(sig, pl, weights[ps])
    var_ids = set(g.variable_ids)
    var_sa = np.array([(k[0] in var_ids) if not isinstance(k[0], tuple) else False for k in keys])
    # one representative label per signature that touches a variable, and its slot-axes
    has_var = var_sa[ps]
    sigs = sig[pl[has_var]]
    uniq, first = np.unique(sigs, return_index=True)
    reps = pl[has_var][first]
    first_label = {int(u): int(r) for u, r in zip(uniq, reps)}
    in_rep = np.isin(pl, reps)
    sas_of_label = {}
    for lab, sa in zip(pl[in_rep].tolist(), ps[in_rep].tolist()):
        sas_of_label.setdefault(lab, []).append(sa)
    input_slots = set(g.input_ids) | {s for (ei, j), s in split_uses.items() if g.eqns[ei].ins[j] in g.input_ids}
    output_slots = set(g.output_ids)
    unit_by_out = {u.out: u for u in units}
    consumes_by_sa = {}
    for e, axes, operands in L.consumes:
        ok = any(_value(o) in zero for o in operands)
        for slot, ax in axes:
            consumes_by_sa.setdefault(index[(slot, ax)], []).append((e, ok))
    groups = []
    for s, lab in first_label.items():
        sas = sas_of_label[lab]
        slot_axes = [keys[i] for i in sas]
        members_sa = [i for i in sas if var_sa[i]]
        grp_units = [unit_by_out[k[0]] for k in slot_axes if k[0] in unit_by_out]
        grp_units.sort(key=lambda u: u.relu)
        anchor = None
        for u in grp_units:
            if u.mean_leaf is not None and (u.mean_leaf, 0) in index and index[(u.mean_leaf, 0)] in members_sa:
                anchor = index[(u.mean_leaf, 0)]
                break
        if anchor is None:
            anchor = min(members_sa, key=lambda i: (g.path_of(keys[i][0]), keys[i][1]))
        alab = labels[offsets[anchor] : offsets[anchor] + sizes[anchor]]
        mine = sig[alab] == np.uint64(s)
        order, seen = [], set()
        for x in alab[mine]:
            if int(x) not in seen:
                seen.add(int(x))
                order.append(int(x))
        glabels = np.array(order, np.int64)
        pos = {x: i for i, x in enumerate(order)}
        members = []
        for i in members_sa:
            slot, ax = keys[i]
            lab_i = labels[offsets[i] : offsets[i] + sizes[i]]
            channel = np.array([pos.get(int(x), -1) for x in lab_i], np.int64)
            members.append(Member(g.path_of(slot), ax, channel))
        members.sort(key=lambda m: (m.path, m.axis))
        reason = (
            _split_unit(grp_units, L, labels, sig, s)
            or _why_whole(
                g, slot_axes, sas, grp_units, L, consumes_by_sa, zero, split_uses, input_slots, output_slots, alab, mine
            )
            or _read_by_units(slot_axes, read_values)
        )
        if grp_units:
            name = grp_units[0].name
        else:
            m = members[0]
            name = "/".join(m.path[strip:]) + f":{m.axis}"
        reads = any(_reads_own_slot(g, u, split_uses) for u in grp_units)
        groups.append(Group(name, glabels, members, slot_axes, grp_units, not reason, reason, reads))
    _two_zero_axes(g, groups, zero)
    groups.sort(key=lambda grp: grp.name)
    names = set()
    for grp in groups:  # names must be unique keys for keep=
        base, k = grp.name, 1
        while grp.name in names:
            k += 1
            grp.name = f"{base}#{k}"
        names.add(grp.name)
    return groups


def _two_zero_axes(g: Graph, groups: list, zero: set):
    """Zero propagation tracks values, not axes: a zero value whose unit groups sit on two different
    axes (an outer product of two pruned layers, a_i + b_j) is zero only where both are, along
    neither axis alone. Such groups are left whole rather than trusting the zero on the wrong axis.
    Several groups on one axis (a concatenation of BN-ReLU branches) are exact: each index of that
    axis is one group's channel, zero when that group drops it."""
    axes_of = {}  # zero slot -> {axis carrying a unit group}
    for grp in groups:
        if grp.units:
            for slot, ax in grp.slots:
                if slot in zero:
                    axes_of.setdefault(slot, set()).add(ax)
    shared = {slot for slot, axes in axes_of.items() if len(axes) > 1}
    for grp in groups:
        if grp.prunable and any(slot in shared for slot, _ in grp.slots):
            grp.prunable = False
            grp.reason = "a zero value carries channel axes of unit groups on two different axes (not modelled)"


def _split_unit(grp_units, L: _Linker, labels, sig, s) -> str:
    """A unit whose channels lie in several groups (``jnp.split`` or a slice sends them different
    ways) gets one SCP mask over all its channels in training (``traced.masked``), which no single
    group's keep mask can follow: every group holding part of it is left whole."""
    for u in grp_units:
        off, n = L.slot_axes[(u.out, u.axis)]
        if not np.all(sig[labels[off : off + n]] == np.uint64(s)):
            return f"unit {u.name}'s channels are split over several groups (split or sliced apart)"
    return ""


def _reads_own_slot(g: Graph, unit, split_uses) -> bool:
    read = _unit_read(g, unit)
    return read is not None and (read[0], read[1]) in split_uses


def _read_by_units(slot_axes, read_values) -> str:
    """A value some units read with their own selections keeps every channel: their gathers index
    the whole value (it is zero where its own group would drop, but they would not see that zero)."""
    if any(not isinstance(slot, tuple) and slot in read_values for slot, _ in slot_axes):
        return "BN-ReLU units read its values with their own selections (read groups)"
    return ""


def _value_of(g: Graph, slot):
    """The value a slot holds (a reader's own slot holds the value it reads)."""
    return g.eqns[slot[1]].ins[slot[2]] if isinstance(slot, tuple) else slot


def _value(slot):
    return slot if not isinstance(slot, (tuple, Lit)) else None


def _why_whole(
    g, slot_axes, sas, grp_units, L, consumes_by_sa, zero, split_uses, input_slots, output_slots, alab, mine
) -> str:
    if not np.all(mine):
        return "an index of its anchor array belongs to another group"
    for slot, ax in slot_axes:
        if (slot, ax) in L.stops:
            return f"stopped by {L.stops[(slot, ax)]}"
    for slot, _ in slot_axes:
        if slot in input_slots:
            return "touches the model's input"
        if slot in output_slots:
            return "touches the model's output"
    if not grp_units:
        return "no BN-ReLU unit gives it a mask"
    for i in sas:
        for e, ok in consumes_by_sa.get(i, []):
            if not ok:
                return f"{e.describe()} sums a value that is not zero where the group drops a channel"
    split_values = {g.eqns[ei].ins[j] for (ei, j) in split_uses}
    for slot, _ in slot_axes:
        if not isinstance(slot, tuple) and slot in split_values and slot not in zero:
            producer = g.producer.get(slot)
            if producer is not None and producer.name == "concatenate" and any(a in zero for a in producer.ins):
                # zeros are tracked per value: a concatenation with a non-zero part is not zero as a whole
                return (
                    f"{producer.describe()} concatenates it with values that are not zero where it drops "
                    "(zeros are tracked per value, not per channel)"
                )
            return "its values are shared by several readers with their own selections (a residual stream)"
    return ""
