"""Latency on this device for the pipeline: the latency model of a traced network and widths chosen
by it (``config.round_to='latency'``).

The cost model (``traced.graph_cost``) says which groups govern which layers; the ops
(``traced.graph_ops.graph_ops``) how to time each layer; ``compact.layer_timings`` times and caches;
``scp.latency_model`` does the arithmetic. The chooser, ``scp.latency_model.choose_widths``, pads the
cut's keep masks (``pad_keep``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from soft_prune_jax.compact import layer_timings as CL
from soft_prune_jax.measure import timing as benchmark
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import latency_model as L

LATENCY = "latency"
DENSE_RUNS = 30  # whole-model runs behind the dense latency (its fastest run)


def latency_target(config) -> Optional[tuple[str, float]]:
    """('target_latency_ratio' | 'target_latency_ms', value) when the config asks for a latency budget."""
    for field in ("target_latency_ratio", "target_latency_ms"):
        if config.get(field) is not None:
            return field, float(config[field])
    return None


def latency_ratio(config, latency: L.LatencyModel) -> float:
    """The latency budget as a fraction of the measured dense latency (a target in ms above it: 1)."""
    field, value = latency_target(config)
    return value if field == "target_latency_ratio" else min(1.0, value / latency.dense_ms)


def batch_size(config) -> int:
    """The batch the latency is priced at: the first of ``config.benchmark_batch_sizes``."""
    return int(tuple(config.benchmark_batch_sizes)[0])


def dense_ms(apply: Callable, variables, input_shape: Sequence[int], batch: int, runs: int = DENSE_RUNS) -> float:
    """Fastest-run ms of ``apply(variables, x)`` on a batch of random images: the estimator of the
    table entries (``compact.layer_timings.low_ms``), so that the rest (dense less its tables) compares like
    with like; a median under another process's load can fall below the sum of the layers' best runs."""
    x = benchmark.random_inputs(batch, input_shape, 0)
    return benchmark.time_compiled(apply, (variables, x), runs=runs)["min_ms"]


def pad_keep(keep: Mapping[str, np.ndarray], widths: Mapping[str, int], z: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``keep`` with each group padded to ``widths[group]`` by its most alive dropped channels (lowest z)."""
    out = {}
    for name, mask in keep.items():
        mask = np.asarray(mask).reshape(-1) > 0
        extra = int(widths.get(name, mask.sum())) - int(mask.sum())
        if extra > 0:
            order = [i for i in np.argsort(np.asarray(z[name], np.float64).reshape(-1), kind="stable") if not mask[i]]
            mask = mask.copy()
            mask[order[:extra]] = True
        out[name] = mask
    return out


def graph_chooser(cost: B.CostModel, ops, batch: int, timings: Optional[CL.Timings] = None):
    """counts -> widths for the graph cut, each group's width by the layers it governs."""
    ms = CL.layer_ms(cost, ops, timings or CL.Timings(), batch, "float32")
    return lambda counts: L.choose_widths(cost, counts, ms)


LANDING_TRIES = 3  # estimate-landings, each tighter by what the last measurement missed by
LANDING_RUNS = 20  # interleaved dense / compact runs behind each measured ratio


def land(
    config,
    cost: B.CostModel,
    latency: L.LatencyModel,
    masks_for: Callable[[Callable[[Any], float]], Any],
    widths_of: Callable[[Any], Mapping[str, int]],
    measure: Callable[[Any], tuple[float, float]],
) -> tuple[Any, dict]:
    """(masks, prune.json's "budget" record): a cut whose *measured* latency meets the latency budget.

    masks_for(cost_fn): the method's masks landed so that ``cost_fn(masks) <= 1`` (SCP removes its
    least alive channels, ``budget.land_on_budget``); cost_fn is the estimated latency ratio of the
    compact widths (``widths_of(masks)``, rounding included) over the aim. measure(masks): (dense ms,
    compact ms), timed taking turns. Where the measurement misses the target the aim is lowered by
    the miss and the cut landed again, at most ``LANDING_TRIES`` times."""
    target = latency_ratio(config, latency)
    aim, tries = target, []
    for _ in range(LANDING_TRIES):
        masks = masks_for(
            lambda m, a=aim: float(L.latency_of_widths(cost, latency, widths_of(m))) / latency.dense_ms / a
        )
        estimate = float(L.latency_of_widths(cost, latency, widths_of(masks))) / latency.dense_ms
        dense, compact = measure(masks)
        tries.append({"aim": aim, "estimated_ratio": estimate, "dense_ms": dense, "compact_ms": compact})
        if compact <= target * dense:
            break
        aim *= target * dense / compact
    last = tries[-1]
    field, value = latency_target(config)
    return masks, {
        field: value,
        "target_latency_ratio_of_dense": target,
        "estimated_latency_ratio": last["estimated_ratio"],
        "measured_latency_ratio": last["compact_ms"] / last["dense_ms"],
        "dense_ms": last["dense_ms"],
        "compact_ms": last["compact_ms"],
        "batch_size": latency.batch_size,
        "device": latency.device,
        "landing_tries": tries,
    }


def measure_pair(dense_apply: Callable, dense_vars, compact_apply: Callable, compact_vars, input_shape, batch: int):
    """(dense ms, compact ms): medians of ``LANDING_RUNS`` runs taking turns on one random batch."""
    x = benchmark.random_inputs(batch, input_shape, 0)
    timed = benchmark.time_interleaved(
        {"dense": (dense_apply, (dense_vars, x)), "compact": (compact_apply, (compact_vars, x))}, runs=LANDING_RUNS
    )
    return timed["dense"]["median_ms"], timed["compact"]["median_ms"]
