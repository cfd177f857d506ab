"""Latency of a network as a function of its group widths, from a table measured on the target device.

MACs are a poor proxy for speed: a conv's latency is a step function of its widths (GEMM kernels
work in vectors and tiles of 4, 8, 16 floats on a CPU, multiples of 8 or 64 on a GPU), so a
narrower layer can be slower. The latency model replaces the MAC count of each layer of a
``CostModel`` by its measured latency:

  * each conv / dense layer has a ``LayerTable``: its latency at the benchmark's batch size and
    dtype on a grid of (input width, output width) pairs (``grid``: multiples of a step plus the
    full width), read between grid points by bilinear interpolation, so the estimate is
    differentiable in the widths (SCP's expected widths drive the controller);
  * what no table covers (pooling, BN, the rest of the graph, and layers that could not be timed)
    is one constant, ``rest_ms``: the dense model's measured latency less its tables at full width.

``latency_of_widths`` is to latency what ``budget.macs_of_widths`` is to MACs, over the same layers
and group terms, over the one cost model of the graph (``traced.graph_cost``). Widths chosen by latency
(``choose_widths``) look each candidate up in a ``LayerMs`` function, which the caller backs with
exact timings where it can (``compact.layer_timings``) and the interpolated table otherwise.

The tables are measured by ``compact.layer_timings`` (timings, cache); everything here is pure.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import masks as M

LATENCY = "latency"  # round_to='latency': each width the fastest at or above what is kept (choose_widths)
GRID_STEP = 8  # table widths are multiples of this (CPU vectors: 4/8/16 floats; GPUs: 8 for half precision)
GRID_POINTS = 4  # ...at most about this many per axis, so wide layers get a coarser step
TIE = 0.01  # widths whose latencies differ by less than this fraction are a tie (the smaller one wins)

LayerMs = Callable[[str, int, int], float]  # (layer path, input width, output width) -> milliseconds


@dataclasses.dataclass(frozen=True)
class LayerTable:
    """Measured latency (ms) of one layer at every (in_grid[i], out_grid[j]) pair: ``ms[i][j]``."""

    path: str
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]

    def __post_init__(self):
        shape = np.shape(np.asarray(self.ms, np.float64))
        if shape != (len(self.in_grid), len(self.out_grid)):
            raise ValueError(
                f"table of {self.path!r}: ms of shape {shape} for grids of {len(self.in_grid)} x {len(self.out_grid)}"
            )


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """The latency tables of a network's layers (by path) and the constant rest, in ms, at one
    batch size and dtype on one device; ``dense_ms`` is the measured latency of the dense model."""

    tables: tuple[LayerTable, ...]
    rest_ms: float
    dense_ms: float
    batch_size: int
    dtype: str
    device: str
    scale: float = 1.0  # the tables' cached timings times this = the machine's speed when dense_ms was timed

    def table(self, path: str) -> Optional[LayerTable]:
        return {t.path: t for t in self.tables}.get(path)


def grid(full: int, step: int = GRID_STEP, points: int = GRID_POINTS) -> tuple[int, ...]:
    """The widths a layer axis of ``full`` channels is timed at: multiples of a step (``step``, or a
    multiple of it so that about ``points`` fit), half a step, and the full width."""
    if full <= 0:
        return (full,)
    stride = step * max(1, -(-full // (step * points)))
    return tuple(sorted({min(full, max(1, step // 2)), *range(stride, full + 1, stride), full}))


def interpolate(table: LayerTable, n_in, n_out) -> jax.Array:
    """The table's latency at (n_in, n_out), bilinear between grid points, clamped at the ends."""
    ms = jnp.asarray(table.ms, jnp.float32)
    xs_in, xs_out = jnp.asarray(table.in_grid, jnp.float32), jnp.asarray(table.out_grid, jnp.float32)
    n_in, n_out = jnp.asarray(n_in, jnp.float32), jnp.asarray(n_out, jnp.float32)
    along_out = jax.vmap(lambda row: jnp.interp(n_out, xs_out, row))(ms)  # each input width, at n_out
    return jnp.interp(n_in, xs_in, along_out)


def latency_of_widths(cost: B.CostModel, model: LatencyModel, group_widths: Mapping[str, Any]) -> jax.Array:
    """Estimated ms with each group at ``group_widths[name]`` (absent groups in full)."""
    tables = {t.path: t for t in model.tables}
    total = jnp.asarray(model.rest_ms, jnp.float32)
    for layer, n_in, n_out in B.layer_widths(cost, group_widths):
        if layer.path in tables:
            total = total + interpolate(tables[layer.path], n_in, n_out)
    return total


def latency_at(cost: B.CostModel, model: LatencyModel, group_widths: Mapping[str, int], layer_ms: LayerMs) -> float:
    """As ``latency_of_widths``, each tabled layer read from ``layer_ms`` (the cached timings, times the
    model's ``scale``) at its exact widths instead of between grid points: a width off the grid (an
    odd count) can run at a fraction of the speed of its aligned neighbours, which no interpolation
    sees. Not differentiable: for landing a cut."""
    tabled = {t.path for t in model.tables}
    rows = B.layer_widths(cost, group_widths)
    return model.rest_ms + model.scale * sum(
        layer_ms(layer.path, int(n_in), int(n_out)) for layer, n_in, n_out in rows if layer.path in tabled
    )


def latency(cost: B.CostModel, model: LatencyModel, keep: B.Keep) -> jax.Array:
    """Estimated ms of the network whose groups keep ``keep`` (0/1: hard-masked; 1 - pi: expected)."""
    return latency_of_widths(cost, model, B.widths(keep))


def latency_ratios(
    cost: B.CostModel, model: LatencyModel, params, mask: M.MaskConfig, early_q: Optional[float] = None
) -> dict[str, jax.Array]:
    """As ``budget.macs_ratios``, of the estimated latency over the measured dense latency (jit-able)."""
    dense = model.dense_ms
    out = {
        "expected": latency(cost, model, B.keep_probabilities(params, mask, cost.units)) / dense,
        "hard": latency(cost, model, B.hard_keep(params, mask, cost.keep_one, cost.units)) / dense,
    }
    if early_q is not None:
        out["early"] = latency(cost, model, B.early_keep(params, mask, early_q, cost.keep_one, cost.units)) / dense
    return out


def candidates(k: int, total: int, step: int = 4, align: int = 16) -> list[int]:
    """k and every multiple of ``step`` above it up to the next multiple of ``align``, and the full
    width when that is within ``align`` (capped at total): the widths a group may be padded to."""
    if k <= 0:
        return [k]
    top = min(total, -(-k // align) * align)
    extra = {total} if total - k <= align else set()
    return sorted({k, top, *range(-(-k // step) * step, top + 1, step)} | extra)


def choose_widths(
    cost: B.CostModel, counts: Mapping[str, int], layer_ms: LayerMs, groups: Optional[Sequence[str]] = None
) -> dict[str, int]:
    """Per group (of ``groups``, default all), the width in ``candidates(count, size)`` whose layers
    take the least time, one group after another (a group chosen earlier at its chosen width, the
    others at their counts); latencies within ``TIE`` of the best go to the smaller width. Layers no
    group of the choice governs do not change, so only the governed layers are compared."""
    sizes = dict(cost.group_sizes)
    chosen = {name: int(counts[name]) for name in counts}
    for name in groups if groups is not None else cost.groups:
        if name not in chosen or name not in sizes:
            continue
        governed = [layer for layer in cost.layers if any(g == name for g, _ in layer.in_terms + layer.out_terms)]
        options = candidates(chosen[name], sizes[name])
        if len(options) == 1 or not governed:
            continue
        subset = dataclasses.replace(cost, layers=tuple(governed))
        cost_of = []
        for c in options:
            rows = B.layer_widths(subset, {**chosen, name: c})
            cost_of.append(sum(layer_ms(layer.path, int(n_in), int(n_out)) for layer, n_in, n_out in rows))
        best = min(cost_of)
        chosen[name] = next(c for c, ms in zip(options, cost_of) if ms <= best * (1.0 + TIE))
    return chosen
