"""Accuracy over a whole evaluation iterator: the mapped ``steps.eval_step`` sums, divided once."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from soft_prune_jax.training.parallel import Parallel


def rates(totals) -> dict:
    """{'accuracy', 'top5_accuracy' (with >= 5 classes), 'loss', 'count'} from summed ``classification_sums``."""
    count = float(totals["count"])
    out = {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count, "count": int(count)}
    if "correct_top5" in totals:
        out["top5_accuracy"] = float(totals["correct_top5"]) / count
    return out


def evaluate(parallel: Parallel, p_eval: Callable, replicated_variables, batches: Iterable) -> dict:
    """``rates`` over a finite iterator of eval batches (padding excluded)."""
    totals = None
    for batch in batches:
        sums = p_eval(replicated_variables, parallel.shard_batch(batch))
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError("the evaluation iterator yielded no batches")
    return rates(parallel.unreplicate(totals))
