"""MACs of a masked network as a function of its masks, and landing a cut on a MAC budget.

A conv or dense layer with C_in inputs and C_out outputs costs ``per_pair * C_in * C_out`` MACs
(``per_pair`` = output positions x kernel taps, read from the MAC count of the dense graph). A
channel group (the channels the cut keeps or drops together, ``graph.groups``) may govern a layer's
input axis, its output axis, or both; an axis no group governs counts in full. An axis may also hold
several groups, or each channel of a group several times (a flatten into a dense layer: once per
position). ``traced.graph_cost.cost_model`` reads all of this off the traced graph; everything here is its
arithmetic. Replacing every governed width by its kept count gives the MACs of the masked network:

  * with 0/1 hard masks, the MACs of the hard-masked network (``hard_macs``);
  * with keep probabilities 1 - pi, the expected MACs (``expected_macs``): differentiable in pi, and
    exact in expectation because different groups' masks are independent.

One group's width enters every layer it governs once: channels coupled in one group are counted
once, and a channel costs MACs both where it is produced (the conv's output axis) and where it is
read (each consumer's input axis). Where several masked units carry the channels of one group
(``CostModel.units``), a channel goes only when every one of them drops it (``group_keep``), as the
cut of ``compact.prune_model`` decides; a group that would lose every channel keeps its most alive
one (``CostModel.keep_one``), as that cut does, so the MACs under hard masks are the compact model's.

Everything is a pure function of a ``CostModel`` (static Python data) and pytrees of arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.scp import masks as M

Keep = Mapping[str, Any]  # {group name: per-channel keep values, 0/1 masks or probabilities}
Terms = tuple[tuple[str, int], ...]  # (group, copies): the axis holds each channel of the group ``copies`` times


@dataclasses.dataclass(frozen=True)
class CostLayer:
    """One conv or dense layer: ``per_pair * in_width * out_width`` MACs per example, where an axis's
    width is its full width less ``copies`` entries per channel its groups drop."""

    path: str  # module path, e.g. 'block0/conv1'
    per_pair: float  # MACs per (input channel, output channel) pair
    in_channels: int
    out_channels: int
    in_terms: Terms = ()  # the groups governing the input axis (none: always full)
    out_terms: Terms = ()  # the groups governing the output axis

    @property
    def dense_macs(self) -> float:
        return self.per_pair * self.in_channels * self.out_channels

    @property
    def in_group(self) -> Optional[str]:
        """The one group that is the whole input axis, if one is."""
        return _single(self.in_terms)

    @property
    def out_group(self) -> Optional[str]:
        return _single(self.out_terms)


def _single(terms: Terms) -> Optional[str]:
    return terms[0][0] if len(terms) == 1 and terms[0][1] == 1 else None


@dataclasses.dataclass(frozen=True)
class UnitChannels:
    """A masked unit whose channels are channels of a group: ``index[i]`` is the group channel of the
    unit's channel i. Several units may carry one group (``traced.graph_cost``)."""

    unit: str  # the masked layer's name, as ``masks.masked_layers`` names it
    group: str
    group_size: int
    index: tuple[int, ...]  # distinct

    def __post_init__(self):
        if len(set(self.index)) != len(self.index) or not all(0 <= i < self.group_size for i in self.index):
            raise ValueError(
                f"unit {self.unit!r}: index {self.index} is invalid: expected distinct channels of "
                f"group {self.group!r} (0..{self.group_size - 1})"
            )


@dataclasses.dataclass(frozen=True)
class CostModel:
    """The layers of a network and the widths of the groups that prune them.

    units: how masked units map to groups (``traced.graph_cost``); empty = each masked unit is the group of
    its own name, channel for channel (hand-made cost models in tests)."""

    layers: tuple[CostLayer, ...]
    group_sizes: tuple[tuple[str, int], ...]  # (name, channels), in the groups' order
    keep_one: frozenset = frozenset()  # groups that never lose their last channel (as prune_model's cut)
    units: tuple[UnitChannels, ...] = ()

    @property
    def dense_macs(self) -> float:
        return float(sum(layer.dense_macs for layer in self.layers))

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.group_sizes)

    def group_of(self, unit: str) -> str:
        """The group a masked unit's channels belong to."""
        for u in self.units:
            if u.unit == unit:
                return u.group
        return unit


def widths(keep: Keep) -> dict[str, jax.Array]:
    """{group: sum of its keep values}: the kept (or expected kept) width of each group."""
    return {name: jnp.sum(jnp.asarray(value, jnp.float32)) for name, value in keep.items()}


def layer_widths(cost: CostModel, group_widths: Mapping[str, Any]) -> list[tuple[CostLayer, Any, Any]]:
    """[(layer, input width, output width)] with each group at ``group_widths[name]`` (a group absent
    from it counts in full): the widths every per-layer cost (MACs, latency) is a function of."""
    sizes = dict(cost.group_sizes)

    def width(full: int, terms: Terms):
        n = full
        for group, copies in terms:
            if group in group_widths:
                n = n + copies * (group_widths[group] - sizes.get(group, 0))
        return n

    return [
        (layer, width(layer.in_channels, layer.in_terms), width(layer.out_channels, layer.out_terms))
        for layer in cost.layers
    ]


def macs_of_widths(cost: CostModel, group_widths: Mapping[str, Any]) -> jax.Array:
    """Total MACs with each group at ``group_widths[name]`` (a group absent from it counts in full)."""
    total = jnp.zeros((), jnp.float32)
    for layer, n_in, n_out in layer_widths(cost, group_widths):
        total = total + layer.per_pair * n_in * n_out
    return total


def macs(cost: CostModel, keep: Keep) -> jax.Array:
    """MACs of the network whose groups keep ``keep`` (0/1: hard-masked; 1 - pi: expected)."""
    return macs_of_widths(cost, widths(keep))


def group_keep(units: Sequence[UnitChannels], unit_keep: Keep) -> dict[str, jax.Array]:
    """{group: keep} from {masked unit: keep}: a group channel is dropped only where every unit that
    carries it drops it, keep = 1 - prod_u (1 - keep_u). With 0/1 masks: kept if any unit keeps it
    (the cut of ``compact.prune_model``); with keep probabilities (the units sample independently):
    the probability that some unit keeps it. Without ``units``, each unit is its own group."""
    if not units:
        return dict(unit_keep)
    drop: dict[str, jax.Array] = {}
    for u in units:
        if u.unit in unit_keep:
            unit_drop = _on_group(u, 1.0 - jnp.reshape(jnp.asarray(unit_keep[u.unit], jnp.float32), (-1,)), 1.0)
            drop[u.group] = drop[u.group] * unit_drop if u.group in drop else unit_drop
    return {group: 1.0 - d for group, d in drop.items()}


def group_z(units: Sequence[UnitChannels], unit_z: Mapping[str, Any]) -> dict[str, jax.Array]:
    """{group: z} from {masked unit: z}: a group channel is as alive as its most alive unit (lowest z)."""
    if not units:
        return dict(unit_z)
    out: dict[str, jax.Array] = {}
    for u in units:
        if u.unit in unit_z:
            z = _on_group(u, jnp.reshape(jnp.asarray(unit_z[u.unit], jnp.float32), (-1,)), jnp.inf)
            out[u.group] = jnp.minimum(out[u.group], z) if u.group in out else z
    return out


def _on_group(u: UnitChannels, values: jax.Array, fill: float) -> jax.Array:
    """A unit's per-channel ``values`` at its group's channels, ``fill`` where it has none: a gather
    (differentiable, unlike a scatter-multiply), the unit's channels being distinct group channels."""
    source = np.full(u.group_size, -1, np.int64)
    source[np.asarray(u.index, np.int64)] = np.arange(len(u.index))
    return jnp.where(source >= 0, values[np.maximum(source, 0)], fill)


def _keep_one(keep: Keep, z: Mapping[str, Any], keep_one: frozenset) -> dict[str, jax.Array]:
    """``keep`` where a keep-one group that would lose every channel keeps its lowest-z one."""
    out = dict(keep)
    for name in keep_one & set(keep):
        k = keep[name]
        out[name] = jnp.where(jnp.any(k > 0), k, jax.nn.one_hot(jnp.argmin(z[name]), k.shape[-1], dtype=k.dtype))
    return out


def _unit_z(params, mask: M.MaskConfig) -> dict[str, jax.Array]:
    layers = M.masked_layers(params)
    return {name: M.deactivation_z(layer["scale"], layer["bias"], mask.eps) for name, layer in layers.items()}


def keep_probabilities(params, mask: M.MaskConfig, units: Sequence[UnitChannels] = ()) -> dict[str, jax.Array]:
    """{group: each channel's probability of being kept}: 1 - pi of its unit (with ``units``: of any
    of its units, ``group_keep``)."""
    return group_keep(units, {name: 1.0 - p["pi"] for name, p in M.layer_probabilities(params, mask).items()})


def hard_keep(
    params, mask: M.MaskConfig, keep_one: frozenset = frozenset(), units: Sequence[UnitChannels] = ()
) -> dict[str, jax.Array]:
    """{group: 0/1 mask}: the masks the model applies at evaluation (keep-one where the group has it;
    with ``units``, a channel stays if any unit keeps it)."""
    hard = {name: p["hard_mask"] for name, p in M.layer_probabilities(params, mask).items()}
    return _keep_one(group_keep(units, hard), group_z(units, _unit_z(params, mask)), keep_one)


def early_keep(
    params, mask: M.MaskConfig, early_q: float, keep_one: frozenset = frozenset(), units: Sequence[UnitChannels] = ()
) -> dict[str, jax.Array]:
    """{group: 0/1 mask} keeping the channels whose deactivation probability q is below ``early_q``.

    With early_q < c = 1 - delta it drops the channels on their way out before the hard mask does
    (the hard mask keeps q < c); keep-one groups keep their lowest-z channel, as the hard mask does.
    """
    z = _unit_z(params, mask)
    early = {name: (jax.scipy.stats.norm.cdf(v) < early_q).astype(jnp.float32) for name, v in z.items()}
    return _keep_one(group_keep(units, early), group_z(units, z), keep_one)


def macs_ratios(cost: CostModel, params, mask: M.MaskConfig, early_q: Optional[float] = None) -> dict[str, jax.Array]:
    """{'expected': E[MACs] / dense, 'hard': hard-masked MACs / dense, and with ``early_q`` 'early':
    the MACs with the channels of q >= early_q gone (``early_keep``)} of the current params (jit-able)."""
    dense = cost.dense_macs
    out = {
        "expected": macs(cost, keep_probabilities(params, mask, cost.units)) / dense,
        "hard": macs(cost, hard_keep(params, mask, cost.keep_one, cost.units)) / dense,
    }
    if early_q is not None:
        out["early"] = macs(cost, early_keep(params, mask, early_q, cost.keep_one, cost.units)) / dense
    return out


def channel_costs(cost: CostModel, group_widths: Mapping[str, Any]) -> dict[str, jax.Array]:
    """{group: d MACs / d width}: the MACs one more (or one fewer) channel of the group costs,
    where it is produced and where it is read, at the given widths of every group."""
    return jax.grad(lambda w: macs_of_widths(cost, w))(
        {k: jnp.asarray(v, jnp.float32) for k, v in group_widths.items()}
    )


def cost_weights(cost: CostModel, keep: Keep) -> dict[str, jax.Array]:
    """Per-group penalty weights proportional to ``channel_costs`` at the widths ``keep`` gives,
    normalised to a mean of 1 over all channels (so lambda keeps its scale), with no gradient."""
    keep = {name: jax.lax.stop_gradient(jnp.asarray(value, jnp.float32)) for name, value in keep.items()}
    per_channel = channel_costs(cost, widths(keep))
    sizes = dict(cost.group_sizes)
    total_channels = sum(sizes[name] for name in per_channel)
    mean = sum(per_channel[name] * sizes[name] for name in per_channel) / max(total_channels, 1)
    return {name: c / jnp.maximum(mean, 1e-12) for name, c in per_channel.items()}


def cost_aware_penalty(params, cost: CostModel, mask: M.MaskConfig, s: float = 2.0) -> jax.Array:
    """sum over masked units of w_g * sum_c (beta_c + s |gamma_c|), w_g = ``cost_weights`` of the unit's
    group at the expected widths: SCP's penalty with each channel weighted by the MACs removing it
    would save."""
    layers = M.masked_layers(params)
    weights = cost_weights(cost, keep_probabilities(params, mask, cost.units))
    penalty = jnp.zeros((), jnp.float32)
    for name, layer in layers.items():  # each unit weighted by the cost of its group's channels
        penalty = penalty + weights.get(cost.group_of(name), 0.0) * M.layer_penalty(layer["scale"], layer["bias"], s)
    return penalty


def land_on_budget(
    masks: Mapping[str, np.ndarray],
    z: Mapping[str, np.ndarray],
    macs_ratio: Callable[[Mapping[str, np.ndarray]], float],
    target: float,
) -> tuple[dict[str, np.ndarray], int]:
    """(masks, removed): ``masks`` with the fewest kept channels removed, highest z first (the least
    alive, z = (eps - beta) / |gamma|, compared across the whole network), so that
    ``macs_ratio(masks) <= target``. Unchanged when it already is; every kept channel goes if even
    that is not enough (``macs_ratio`` may then still exceed ``target``: the caller reports it).

    macs_ratio must not increase when a channel is removed (true of the exact compact count and of
    ``macs``), so the count is found by bisection: O(log channels) calls.
    """
    masks = {name: np.asarray(m, np.float32).reshape(-1) for name, m in masks.items()}
    if macs_ratio(masks) <= target:
        return masks, 0
    candidates = [
        (float(z_c), name, int(i))
        for name, m in masks.items()
        for i, z_c in zip(np.flatnonzero(m > 0), np.asarray(z[name]).reshape(-1)[m > 0])
    ]
    candidates.sort(key=lambda t: (-t[0], t[1], t[2]))  # least alive first; ties in a fixed order

    def without(count: int) -> dict[str, np.ndarray]:
        out = {name: m.copy() for name, m in masks.items()}
        for _, name, i in candidates[:count]:
            out[name][i] = 0.0
        return out

    low, high = 0, len(candidates)  # macs_ratio(without(low)) > target; high: the answer if any is
    while high - low > 1:
        mid = (low + high) // 2
        if macs_ratio(without(mid)) <= target:
            high = mid
        else:
            low = mid
    return without(high), high
