"""``prune_model`` with a latency budget: cut a trained model until its compact model runs at a target
share of the dense model's latency, measured on this device.

    compact, compact_vars = prune_model(model, variables, x, target_latency_ratio=0.5, train=False)
    compact.budget  # {'target_latency_ratio': 0.5, 'estimated_latency_ratio': ..., 'measured_latency_ratio': ...}

Without a target (and with an int ``round_to``) this is ``compact.prune_model`` itself. With one, the
model's traced graph gives the cost model and the layers to time (``traced.graph_cost``,
``traced.graph_ops``); the latency tables of this device (``compact.layer_timings``, cached) estimate
each candidate cut; channels go least important first over the whole network (``criterion``: 'scp',
SCP's z = (eps - beta) / |gamma|, starting from what the SCP hard masks already drop; 'magnitude',
the smallest BN |gamma| first, starting from the whole model, for a model trained without SCP);
widths are padded to the fastest width at or above the kept count (``round_to='latency'``, the
default under a budget); and the compact model is timed against the dense one, landing again lower
where the measurement missed (``traced.latency_landing.land``). ``round_to='latency'`` without a
target pads the SCP hard masks' widths the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from soft_prune_jax.compact import layer_timings as CL
from soft_prune_jax.compact import prune_model as P
from soft_prune_jax.models import user as U
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import graph_cost, latency_landing
from soft_prune_jax.traced.graph_ops import graph_ops
from soft_prune_jax.traced.masked import UnitSet

CRITERIA = ("scp", "magnitude")
LATENCY = latency_landing.LATENCY


class _Traced:
    """What ``UnitSet.analyze`` needs of a model: ``apply(variables, x, train=False)`` and ``keep_whole``."""

    def __init__(self, fn: Callable, keep_whole: tuple):
        self.fn, self.keep_whole = fn, keep_whole

    def apply(self, variables, x, *, train: bool = False):
        del train  # the model is cut from its evaluation, as prune_model traces it
        return self.fn(variables, x)


def _as_traced(model, args, kwargs):
    """(traced model, variables by collection, sample input) of a linen or NNX model."""
    whole = tuple(getattr(model, "keep_whole", ()) or ())
    if isinstance(model, nnx.Module):
        if len(args) != 1:
            raise P.PruneError(
                f"prune_model(module, x, target_latency_...): a latency budget takes one image input, got {len(args)}"
            )
        copy = nnx.merge(*nnx.split(model))
        copy.eval()
        user = U.UserModel("prune_model", "nnx", lambda key: copy, copy, None)

        def nnx_fn(variables, x):
            module = user.merge(variables)
            module.eval()
            return module(x, **kwargs)

        return _Traced(nnx_fn, whole), U.pure_state(copy), args[0]
    if isinstance(model, nn.Module):
        if len(args) != 2:
            raise P.PruneError(
                "prune_model(model, variables, x, target_latency_...): a latency budget takes the variables and "
                f"one image input, got {len(args)} positional arguments"
            )
        return _Traced(lambda v, x: model.apply(v, x, **kwargs), whole), dict(args[0]), args[1]
    raise TypeError(f"prune_model takes a flax.linen Module or a flax.nnx Module, got {type(model).__name__}")


def _target(ratio, ms) -> tuple[str, float]:
    if ratio is not None and ms is not None:
        raise P.PruneError(
            f"target_latency_ratio={ratio!r} and target_latency_ms={ms!r}: expected one latency target, not both"
        )
    field, value = ("target_latency_ratio", ratio) if ratio is not None else ("target_latency_ms", ms)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0
    if not ok or (field == "target_latency_ratio" and value > 1):
        accepted = "a fraction in (0, 1]" if field == "target_latency_ratio" else "milliseconds > 0"
        raise P.PruneError(f"{field}={value!r} is invalid: expected {accepted}")
    return field, float(value)


def _check_round_to(round_to) -> None:
    if round_to == LATENCY:
        return
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise P.PruneError(f"round_to={round_to!r} is invalid: expected an int >= 1 (1 = no alignment) or 'latency'")


def prune_model(
    model,
    *args,
    target_latency_ratio: Optional[float] = None,
    target_latency_ms: Optional[float] = None,
    criterion: str = "scp",
    latency_batch: int = 64,
    timings: Optional[CL.Timings] = None,
    keep: Optional[Mapping[str, Any]] = None,
    round_to=None,
    mask_config: Optional[M.MaskConfig] = None,
    check: bool = True,
    **kwargs,
):
    """Physically prunes a linen model (returns ``(compact_model, compact_variables)``) or an NNX module
    (returns the compact module); ``compact.prune_model.prune_model`` says how, this module's docstring
    what the latency arguments add.

    target_latency_ratio / target_latency_ms: the budget, a share of the dense model's latency or
      milliseconds, at ``latency_batch`` images per call on this device (one of the two). The compact
      model's ``budget`` attribute then holds the target, the estimate and the measurement.
    criterion: which channels go first under a budget, 'scp' (SCP's z) or 'magnitude' (BN |gamma|).
    timings: the per-device timing cache (``compact.layer_timings.Timings``; default: under ~/.cache).
    round_to: an int >= 1 (pad widths to multiples) or 'latency' (the fastest width at or above the
      kept count); default 1, or 'latency' under a budget.
    keep, mask_config, check: as ``compact.prune_model.prune_model`` (``keep`` not with a budget).
    """
    budget = target_latency_ratio is not None or target_latency_ms is not None
    if criterion not in CRITERIA:
        raise P.PruneError(f"criterion={criterion!r} is invalid: expected one of {', '.join(CRITERIA)}")
    round_to = (LATENCY if budget else 1) if round_to is None else round_to
    _check_round_to(round_to)
    if not budget and round_to != LATENCY:
        return P.prune_model(model, *args, keep=keep, round_to=round_to, mask_config=mask_config, check=check, **kwargs)
    if keep is not None and budget:
        raise P.PruneError("keep= with a latency target: expected one of them (the budget decides what is kept)")
    field, value = _target(target_latency_ratio, target_latency_ms) if budget else (None, None)
    if not isinstance(latency_batch, int) or isinstance(latency_batch, bool) or latency_batch < 1:
        raise P.PruneError(f"latency_batch={latency_batch!r} is invalid: expected an int >= 1")
    mask = mask_config or P._mask_config(model, None)
    traced, variables, x = _as_traced(model, args, kwargs)
    units = UnitSet.analyze(traced, variables, x)
    if not units.units:
        raise P.PruneError("the model has no prunable BN-ReLU unit: no channel can go to meet a latency budget")
    cost = graph_cost.cost_model(units)
    timings = timings or CL.Timings()
    chooser = latency_landing.graph_chooser(cost, graph_ops(units.analysis), latency_batch, timings)
    start, z = _start_and_order(units, cost, variables, mask, criterion)

    def widths_of(masks) -> dict[str, int]:
        counts = {n: max(1, int(np.sum(m))) for n, m in masks.items()}
        if round_to == LATENCY:
            return chooser(counts)
        sizes = dict(cost.group_sizes)
        return {n: min(sizes[n], -(-c // round_to) * round_to) for n, c in counts.items()}

    def keep_of(masks) -> dict[str, np.ndarray]:
        return latency_landing.pad_keep(masks, widths_of(masks), z)

    def cut(masks, check_it: bool):
        return P.prune_model(model, *args, keep=keep_of(masks), mask_config=mask, check=check_it, **kwargs)

    if not budget:
        return cut(start, check)
    input_shape = tuple(np.shape(x)[1:])
    dense_ms = latency_landing.dense_ms(traced.apply, variables, input_shape, latency_batch)
    latency = CL.latency_model(cost, graph_ops(units.analysis), dense_ms, timings, batch=latency_batch)
    target = value if field == "target_latency_ratio" else min(1.0, value / dense_ms)
    floor = latency_landing.unreachable(cost, latency, target)
    if floor is not None:
        nearest = floor if field == "target_latency_ratio" else floor * dense_ms
        raise P.PruneError(
            f"{field}={value!r} cannot be reached on {latency.device}: one channel per group is estimated at "
            f"{floor:.3f} of the dense {dense_ms:.2f} ms; expected at least {nearest:.3g}"
        )

    def measure(masks):
        compact = cut(masks, False)
        apply, compact_vars = _apply_of(compact)
        return latency_landing.measure_pair(traced.apply, variables, apply, compact_vars, input_shape, latency_batch)

    layer_ms = CL.layer_ms(cost, graph_ops(units.analysis), timings, latency_batch, "float32")
    masks, record = latency_landing.land(
        target, cost, latency, lambda fn: B.land_on_budget(start, z, fn, 1.0)[0], widths_of, measure, layer_ms
    )
    compact = cut(masks, check)
    (compact[0] if isinstance(compact, tuple) else compact).budget = {field: value, "criterion": criterion, **record}
    return compact


def _start_and_order(units: UnitSet, cost: B.CostModel, variables, mask: M.MaskConfig, criterion: str):
    """({group: 0/1 keep mask} to start from, {group: order score, lowest most important})."""
    view = M.masked_layers(jax.tree_util.tree_map(np.asarray, units.unit_view(variables["params"])))
    if criterion == "scp":
        unit_scores = {n: M.deactivation_z(v["scale"], v["bias"], mask.eps) for n, v in view.items()}
        hard = {
            n: np.asarray(
                M.hard_mask(
                    M.prune_probability(M.deactivation_probability(v["scale"], v["bias"], mask.eps), mask.k, mask.c)
                )
            )
            for n, v in view.items()
        }
        start = units.group_keep(hard)
    else:  # magnitude: the larger |gamma|, the more important
        unit_scores = {n: -np.abs(np.asarray(v["scale"])) for n, v in view.items()}
        start = {name: np.ones(size, bool) for name, size in cost.group_sizes}
    z = {n: np.asarray(v, np.float64) for n, v in B.group_z(cost.units, unit_scores).items()}
    start = {n: np.asarray(start.get(n, np.ones(size, bool)), np.float32) for n, size in cost.group_sizes}
    return start, z


def _apply_of(compact) -> tuple[Callable, Any]:
    """(apply(variables, x), variables) of a compact linen model or NNX module, for timing."""
    if isinstance(compact, tuple):
        model, compact_vars = compact
        return model.apply, compact_vars
    graphdef, state = nnx.split(compact)
    return (lambda s, x: nnx.merge(graphdef, s)(x)), state
