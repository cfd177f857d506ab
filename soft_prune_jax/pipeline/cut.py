"""Which channels surgery cuts, as the config's method decides, and the MACs of a cut.

``surgery_choice`` asks the method for its masks (None: the model's own hard masks) and its
ranking for the keep-one fallback and round_to padding; it gives the method ``macs_ratio(masks)``
so a method can aim at a MAC budget without knowing about surgery or FLOP counting.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from soft_prune_jax.compact import align, surgery
from soft_prune_jax.compact.structure import describe
from soft_prune_jax.measure import flops
from soft_prune_jax.methods import get_method
from soft_prune_jax.pipeline import latency
from soft_prune_jax.training.experiment import create_model


def surgery_round_to(config, input_shape: Sequence[int], model=None):
    """``config.round_to`` as ``surgery.plan`` takes it: an int, for 'auto' an ``align.Auto`` that
    chooses widths for the dataset's input shape (one latency table shared by every plan of the run),
    for 'latency' an ``align.Chosen`` by the latency of ``model``'s layers at the benchmark batch."""
    if config.round_to == align.AUTO:
        return align.Auto(latency=align.LatencyTable(), input_shape=tuple(input_shape))
    if config.round_to == latency.LATENCY:
        model = model if model is not None else create_model(config)
        return latency.builtin_chooser(model, input_shape, latency.batch_size(config))
    return int(config.round_to)


def surgery_choice(
    config, model, variables, input_shape: Sequence[int], record: Optional[dict] = None
) -> dict[str, Any]:
    """{'masks', 'scores'}: keyword arguments of ``surgery.plan``/``surgery.prune`` for ``config.method``.
    Under a latency budget the masks are landed on the measured latency, and ``record`` (if given)
    receives prune.json's "budget" record (``latency.land``)."""
    method = get_method(config.method)
    scores = method.keep_scores(variables["params"]) if method.keep_scores is not None else None
    round_to = surgery_round_to(config, input_shape, model)
    if latency.latency_target(config) is not None:
        masks, landed = _latency_landing(config, model, variables, input_shape, method, scores, round_to)
        if record is not None:
            record.update(landed)
        return {"masks": masks, "scores": scores}
    rebuild = describe(model).rebuild
    dense_macs = functools.cache(lambda: flops.count(model, None, input_shape).macs)

    def macs_ratio(masks: Mapping[str, np.ndarray]) -> float:
        plans = surgery.plan(model, variables, round_to=round_to, masks=masks, scores=scores)
        compact = rebuild({name: p.kept for name, p in plans.items()})
        return flops.count(compact, None, input_shape).macs / dense_macs()

    return {"masks": method.surgery_masks(config, variables, macs_ratio), "scores": scores}


def _latency_landing(config, model, variables, input_shape, method, scores, round_to):
    """(masks, record) of ``latency.land`` for a built-in model: surgery's widths, its compact model timed."""
    dense = model.clone(mask=None)
    batch = latency.batch_size(config)
    cost, lm = latency.builtin_model(dense, variables, input_shape, batch)

    def widths_of(masks):
        return {
            n: len(p.kept)
            for n, p in surgery.plan(model, variables, round_to=round_to, masks=masks, scores=scores).items()
        }

    def measure(masks):
        compact, compact_vars = surgery.prune(model, variables, round_to=round_to, masks=masks, scores=scores)
        return latency.measure_pair(
            lambda v, x: dense.apply(v, x, train=False),
            variables,
            lambda v, x: compact.apply(v, x, train=False),
            compact_vars,
            input_shape,
            batch,
        )

    return latency.land(config, cost, lm, lambda fn: method.surgery_masks(config, variables, fn), widths_of, measure)


def effective_masks(config, model, variables, input_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """The 0/1 masks whose hard-masked network the compact model reproduces exactly."""
    choice = surgery_choice(config, model, variables, input_shape)
    round_to = surgery_round_to(config, input_shape, model)
    return surgery.masks_of(surgery.plan(model, variables, round_to=round_to, **choice))


def progress_macs_fn(model, input_shape: Sequence[int]) -> Callable[[Mapping[str, Any]], dict]:
    """variables -> {'macs', 'ratio'}: MACs of the network the current hard masks leave (progress lines)."""
    dense_macs = flops.count(model, None, input_shape).macs

    def macs_fn(variables):
        compact, compact_vars = surgery.prune(model, variables)
        macs = flops.count(compact, compact_vars, input_shape).macs
        return {"macs": macs, "ratio": macs / dense_macs}

    return macs_fn
