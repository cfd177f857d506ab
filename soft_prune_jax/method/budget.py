"""MACs of a masked network as a function of its masks, and landing a cut on a MAC budget.

A conv or dense layer with C_in inputs and C_out outputs costs ``per_pair * C_in * C_out`` MACs
(``per_pair`` = output positions x kernel taps, read from a FLOP count of the dense network). A
mask group (the channels one masked unit governs, ``structure.MaskGroup``, or any group of the same
form: a name and (collection, path, axis) slices) may govern a layer's input axis, its output axis,
or both; an axis no group governs counts in full. Replacing every governed width by its kept count
gives the MACs of the masked network:

  * with 0/1 hard masks, the MACs of the hard-masked network (``hard_macs``);
  * with keep probabilities 1 - pi, the expected MACs (``expected_macs``): differentiable in pi, and
    exact in expectation because different groups' masks are independent.

One group's width enters every layer it governs once: channels coupled in one group are counted
once, and a channel costs MACs both where it is produced (the conv's output axis) and where it is
read (each consumer's input axis). A surgery that removes a whole residual branch once one of its
masks is empty removes more than this count does, so in that case it is an upper bound.

Everything is a pure function of a ``CostModel`` (static Python data) and pytrees of arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.method import masks as M

Keep = Mapping[str, Any]  # {group name: per-channel keep values, 0/1 masks or probabilities}


@dataclasses.dataclass(frozen=True)
class CostLayer:
    """One conv or dense layer: ``per_pair * in_width * out_width`` MACs per example."""

    path: str  # module path, e.g. 'block0/conv1'
    per_pair: float  # MACs per (input channel, output channel) pair
    in_channels: int
    out_channels: int
    in_group: Optional[str] = None  # the group governing the input axis (None: always full)
    out_group: Optional[str] = None  # the group governing the output axis

    @property
    def dense_macs(self) -> float:
        return self.per_pair * self.in_channels * self.out_channels


@dataclasses.dataclass(frozen=True)
class CostModel:
    """The layers of a network and the widths of the groups that prune them."""

    layers: tuple[CostLayer, ...]
    group_sizes: tuple[tuple[str, int], ...]  # (name, channels), in the groups' order
    keep_one: frozenset = frozenset()  # groups that never lose their last channel (plain chains)

    @property
    def dense_macs(self) -> float:
        return float(sum(layer.dense_macs for layer in self.layers))

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.group_sizes)


def cost_model(groups: Iterable[Any], layers: Iterable[Any]) -> CostModel:
    """The ``CostModel`` of a network from its mask groups and its per-layer FLOP count.

    groups: objects with ``name``, ``slices`` (each with ``collection``, ``path`` (tuple) and ``axis``)
      and optionally ``keep_at_least_one`` -- ``structure.describe(model).groups``, or the groups
      of any other source in the same form.
    layers: objects with ``path`` ('/'-joined module path), ``kind`` ('conv' | 'dense'),
      ``kernel_size``, ``in_channels``, ``out_channels`` and ``macs`` -- ``flops.count(...).layers``.
    """
    groups = list(groups)
    owners: dict[tuple[str, tuple, int], str] = {}
    for group in groups:
        for s in group.slices:
            owners[(s.collection, tuple(s.path), int(s.axis))] = group.name
    sizes: dict[str, int] = {}
    rows = []
    for layer in layers:
        kernel = tuple(layer.path.split("/")) + ("kernel",)
        ndim = 2 if layer.kind == "dense" else len(layer.kernel_size) + 2
        in_group, out_group = owners.get(("params", kernel, ndim - 2)), owners.get(("params", kernel, ndim - 1))
        for group, width in ((in_group, layer.in_channels), (out_group, layer.out_channels)):
            if group is not None and sizes.setdefault(group, width) != width:
                raise ValueError(
                    f"group {group} governs axes of {sizes[group]} and {width} channels "
                    f"(at {layer.path}): expected one width per group"
                )
        pairs = layer.in_channels * layer.out_channels
        rows.append(
            CostLayer(
                layer.path,
                layer.macs / pairs if pairs else 0.0,
                layer.in_channels,
                layer.out_channels,
                in_group,
                out_group,
            )
        )
    group_sizes = tuple((g.name, sizes[g.name]) for g in groups if g.name in sizes)
    keep_one = frozenset(g.name for g in groups if getattr(g, "keep_at_least_one", False))
    return CostModel(tuple(rows), group_sizes, keep_one)


def widths(keep: Keep) -> dict[str, jax.Array]:
    """{group: sum of its keep values}: the kept (or expected kept) width of each group."""
    return {name: jnp.sum(jnp.asarray(value, jnp.float32)) for name, value in keep.items()}


def macs_of_widths(cost: CostModel, group_widths: Mapping[str, Any]) -> jax.Array:
    """Total MACs with each group at ``group_widths[name]`` (a group absent from it counts in full)."""
    total = jnp.zeros((), jnp.float32)
    for layer in cost.layers:
        n_in = group_widths.get(layer.in_group, layer.in_channels) if layer.in_group else layer.in_channels
        n_out = group_widths.get(layer.out_group, layer.out_channels) if layer.out_group else layer.out_channels
        total = total + layer.per_pair * n_in * n_out
    return total


def macs(cost: CostModel, keep: Keep) -> jax.Array:
    """MACs of the network whose groups keep ``keep`` (0/1: hard-masked; 1 - pi: expected)."""
    return macs_of_widths(cost, widths(keep))


def keep_probabilities(params, mask: M.MaskConfig) -> dict[str, jax.Array]:
    """{masked unit: 1 - pi}: each channel's probability of being kept by a soft mask."""
    return {name: 1.0 - p["pi"] for name, p in M.layer_probabilities(params, mask).items()}


def hard_keep(params, mask: M.MaskConfig, keep_one: frozenset = frozenset()) -> dict[str, jax.Array]:
    """{masked unit: 0/1 mask}: the masks the model applies at evaluation (keep-one where the unit has it)."""
    out = {}
    for name, layer in M.masked_layers(params).items():
        pi = M.prune_probability(M.deactivation_probability(layer["scale"], layer["bias"], mask.eps), mask.k, mask.c)
        if name in keep_one:
            out[name] = M.hard_mask_keep_one(pi, M.deactivation_z(layer["scale"], layer["bias"], mask.eps))
        else:
            out[name] = M.hard_mask(pi)
    return out


def early_keep(params, mask: M.MaskConfig, early_q: float, keep_one: frozenset = frozenset()) -> dict[str, jax.Array]:
    """{masked unit: 0/1 mask} keeping the channels whose deactivation probability q is below ``early_q``.

    With early_q < c = 1 - delta it drops the channels on their way out before the hard mask does
    (the hard mask keeps q < c); keep-one units keep their lowest-z channel, as the hard mask does.
    """
    out = {}
    for name, layer in M.masked_layers(params).items():
        z = M.deactivation_z(layer["scale"], layer["bias"], mask.eps)
        keep = (jax.scipy.stats.norm.cdf(z) < early_q).astype(jnp.float32)
        if name in keep_one:
            keep = jnp.where(jnp.any(keep > 0), keep, jax.nn.one_hot(jnp.argmin(z), keep.shape[-1]))
        out[name] = keep
    return out


def macs_ratios(cost: CostModel, params, mask: M.MaskConfig, early_q: Optional[float] = None) -> dict[str, jax.Array]:
    """{'expected': E[MACs] / dense, 'hard': hard-masked MACs / dense, and with ``early_q`` 'early':
    the MACs with the channels of q >= early_q gone (``early_keep``)} of the current params (jit-able)."""
    dense = cost.dense_macs
    out = {
        "expected": macs(cost, keep_probabilities(params, mask)) / dense,
        "hard": macs(cost, hard_keep(params, mask, cost.keep_one)) / dense,
    }
    if early_q is not None:
        out["early"] = macs(cost, early_keep(params, mask, early_q, cost.keep_one)) / dense
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
    """sum over groups of w_g * sum_c (beta_c + s |gamma_c|), w_g = ``cost_weights`` at the expected
    widths: SCP's penalty with each channel weighted by the MACs removing it would save."""
    layers = M.masked_layers(params)
    weights = cost_weights(cost, keep_probabilities(params, mask))
    penalty = jnp.zeros((), jnp.float32)
    for name, layer in layers.items():
        penalty = penalty + weights.get(name, 0.0) * M.layer_penalty(layer["scale"], layer["bias"], s)
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
