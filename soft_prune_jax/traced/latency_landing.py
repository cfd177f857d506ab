"""Landing a cut on a latency budget, for the pipeline's prune phase and ``prune_model`` alike.

The latency model of a traced network (``compact.layer_timings.latency_model`` over the graph's cost
model and ops) estimates a compact model's latency from its group widths; widths are padded to the
fastest width at or above what is kept (``graph_chooser``, ``pad_keep``); ``land`` removes channels
until the estimate meets the budget, then *measures* the compact model against the dense one and,
where the measurement misses (or lands far below the budget), lands again by the miss.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from soft_prune_jax.compact import layer_timings as CL
from soft_prune_jax.measure import timing
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import latency_model as L

LATENCY = L.LATENCY
DENSE_RUNS = 30  # whole-model runs behind the dense latency (its fastest run)
LANDING_TRIES = 4  # estimate-landings, each moved by what the last measurement missed by
LANDING_RUNS = 20  # interleaved dense / compact runs behind each measured ratio
LANDING_SLACK = 0.1  # a measurement this far below the target lands again higher (more channels kept)


def dense_ms(apply: Callable, variables, input_shape: Sequence[int], batch: int, runs: int = DENSE_RUNS) -> float:
    """Fastest-run ms of ``apply(variables, x)`` on a batch of random images: the estimator of the
    table entries (``compact.layer_timings.low_ms``), so that the rest (dense less its tables) compares like
    with like; a median under another process's load can fall below the sum of the layers' best runs."""
    x = timing.random_inputs(batch, input_shape, 0)
    return timing.time_compiled(apply, (variables, x), runs=runs)["min_ms"]


def measure_pair(dense_apply: Callable, dense_vars, compact_apply: Callable, compact_vars, input_shape, batch: int):
    """(dense ms, compact ms): medians of ``LANDING_RUNS`` runs taking turns on one random batch."""
    x = timing.random_inputs(batch, input_shape, 0)
    timed = timing.time_interleaved(
        {"dense": (dense_apply, (dense_vars, x)), "compact": (compact_apply, (compact_vars, x))}, runs=LANDING_RUNS
    )
    return timed["dense"]["median_ms"], timed["compact"]["median_ms"]


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


def floor_ratio(cost: B.CostModel, latency: L.LatencyModel) -> float:
    """The estimated latency ratio with one channel left per group: no budget below it can be met."""
    return float(L.latency_of_widths(cost, latency, {g: 1 for g in cost.groups})) / latency.dense_ms


def unreachable(cost: B.CostModel, latency: L.LatencyModel, target: float) -> Optional[float]:
    """The floor (``floor_ratio``) when ``target`` lies below it, else None. A floor at or above the
    dense latency says the estimate cannot tell widths apart here (a network too small for its call
    overhead, or timings taken under changing load): then nothing is refused, with a warning, and the
    landing's measurements decide."""
    floor = floor_ratio(cost, latency)
    if floor >= 1.0:
        logging.warning(
            "latency estimate: one channel per group is estimated at %.3f of the dense %.3f ms, not below it; "
            "the landing's measurements decide",
            floor,
            latency.dense_ms,
        )
        return None
    return floor if target < floor else None


def _bracketed(aim: float, tries: Sequence[dict], target: float) -> float:
    """``aim``, or the middle of the estimates that bracket the target (the highest estimate measured
    within it, the lowest measured above it) where ``aim`` falls outside them: a noisy measurement can
    call for a jump past a cut already measured too slow."""
    within = [t["estimated_ratio"] for t in tries if t["compact_ms"] <= target * t["dense_ms"]]
    above = [t["estimated_ratio"] for t in tries if t["compact_ms"] > target * t["dense_ms"]]
    if not within or not above:
        return aim
    low, high = max(within), min(above)
    return aim if low < aim < high else (low + high) / 2


def land(
    target: float,
    cost: B.CostModel,
    latency: L.LatencyModel,
    masks_for: Callable[[Callable[[Any], float]], Any],
    widths_of: Callable[[Any], Mapping[str, int]],
    measure: Callable[[Any], tuple[float, float]],
    layer_ms: Optional[L.LayerMs] = None,
) -> tuple[Any, dict]:
    """(masks, record): a cut whose *measured* latency is at most ``target`` of the dense model's.

    masks_for(cost_fn): masks landed so that ``cost_fn(masks) <= 1`` (the least alive channels removed
    first, ``scp.cost.land_on_budget``); cost_fn is the estimated latency ratio of the compact widths
    (``widths_of(masks)``, rounding included) over the aim: each layer timed at its exact widths where
    ``layer_ms`` is given (``scp.latency_model.latency_at``), else read off the interpolated tables.
    measure(masks): (dense ms, compact ms), timed taking turns.

    Where the measurement misses the target, the next aim is the last estimate scaled by the miss, and
    the cut is landed again; where it lands more than ``LANDING_SLACK`` below the target (channels
    removed for nothing), the aim is raised the same way, never past a cut measured above the target
    (``_bracketed``). At most ``LANDING_TRIES`` landings; the cut
    kept is the slowest one measured within the target (else the last). The record: target, the kept
    cut's estimate and measurement, every try."""

    def estimate(masks) -> float:
        widths = widths_of(masks)
        ms = L.latency_at(cost, latency, widths, layer_ms) if layer_ms else L.latency_of_widths(cost, latency, widths)
        return float(ms) / latency.dense_ms

    aim, tries, landed = target, [], []
    for _ in range(LANDING_TRIES):
        masks = masks_for(lambda m, a=aim: estimate(m) / a)
        dense, compact = measure(masks)
        estimated = estimate(masks)
        tries.append({"aim": aim, "estimated_ratio": estimated, "dense_ms": dense, "compact_ms": compact})
        landed.append(masks)
        measured = compact / dense
        if measured <= target and (measured >= (1.0 - LANDING_SLACK) * target or measured <= 0.0):
            break  # within the target and close to it (a zero measurement gives nothing to steer by)
        # the next estimate must move by the measured miss: scaling the aim instead could admit the same cut
        aim = _bracketed(min(1.0, estimated * target / measured), tries, target)
    within = [i for i, t in enumerate(tries) if t["compact_ms"] <= target * t["dense_ms"]]
    kept = max(within, key=lambda i: tries[i]["compact_ms"] / tries[i]["dense_ms"]) if within else len(tries) - 1
    best = tries[kept]
    measured = best["compact_ms"] / best["dense_ms"]
    at_floor = all(int(w) <= 1 for w in widths_of(landed[kept]).values())
    _warn_if_poor(target, measured, bool(within), at_floor, len(tries))
    return landed[kept], {
        "target_latency_ratio_of_dense": target,
        "met": bool(within),
        "at_floor": at_floor,
        "estimated_latency_ratio": best["estimated_ratio"],
        "measured_latency_ratio": measured,
        "dense_ms": best["dense_ms"],
        "compact_ms": best["compact_ms"],
        "batch_size": latency.batch_size,
        "device": latency.device,
        "landing_tries": tries,
        "kept_try": kept,
    }


def _warn_if_poor(target: float, measured: float, met: bool, at_floor: bool, tries: int) -> None:
    """A budget met only by the bone, or not met at all, is a result the user must hear about: the
    estimate's floor (``unreachable``) let it pass before training, the measurements did not."""
    if not met:
        logging.warning(
            "latency budget %.3f not met: the kept cut of %d landings measured %.3f of the dense model",
            target,
            tries,
            measured,
        )
    if at_floor:
        logging.warning(
            "latency budget %.3f: the kept cut leaves one channel in every prunable group (measured %.3f). Most of "
            "this network's latency is in what it cannot prune (the layers outside its channel groups): expect a "
            "large loss of accuracy, or ask for a higher target",
            target,
            measured,
        )
