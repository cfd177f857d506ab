"""Latency on this device for the pipeline: what the config asks (``target_latency_ratio`` /
``target_latency_ms``, ``round_to='latency'``, the batch priced) and the landing of the prune phase.

The landing itself, the dense timing, the width chooser and the padding of keep masks are shared with
``prune_model`` and live in ``traced.latency_landing``; the cost model (``traced.graph_cost``) says
which groups govern which layers, ``traced.graph_ops`` how to time each layer, ``compact.layer_timings``
times and caches, ``scp.latency_model`` does the arithmetic.
"""

from __future__ import annotations

from typing import Any, Optional

from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import latency_model as L
from soft_prune_jax.traced import latency_landing as landing
from soft_prune_jax.traced.latency_landing import LATENCY, dense_ms, graph_chooser, measure_pair, pad_keep

__all__ = ["LATENCY", "batch_size", "dense_ms", "graph_chooser", "land", "latency_ratio", "latency_target"]
__all__ += ["measure_pair", "pad_keep"]  # the shared pieces, called through this module (tests replace them here)


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


def land(
    config, cost: B.CostModel, latency: L.LatencyModel, masks_for, widths_of, measure, layer_ms=None
) -> tuple[Any, dict]:
    """(masks, prune.json's "budget" record) of ``traced.latency_landing.land`` at the config's budget."""
    field, value = latency_target(config)
    target = latency_ratio(config, latency)
    masks, record = landing.land(target, cost, latency, masks_for, widths_of, measure, layer_ms)
    return masks, {field: value, **record}
