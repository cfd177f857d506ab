"""The per-device steps, written once with an ``axis_name`` and run under pmap or shard_map alike.

Gradients and metrics are averaged with ``lax.pmean``; BatchNorm statistics are synchronised by the
models themselves (built with the same ``axis_name``). The Gumbel key of a step is
``fold_in(state.rng, step)``, identical on every replica, so every replica samples the same masks,
as a single device would for the whole batch.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from soft_prune_jax.scp.masks import GUMBEL_RNG
from soft_prune_jax.training.budget_control import Budget
from soft_prune_jax.training.state import TrainState

AXIS = "batch"  # the mapped axis name used by every step, pmap and shard_map alike
TOP_K = 5  # top-5 accuracy is reported wherever there are at least this many classes


def cross_entropy_loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(
    state: TrainState,
    batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    regulariser: Callable,
    axis_name: Optional[str] = AXIS,
    budget: Optional[Budget] = None,
):
    """One SGD step on this device's shard of the global batch (``model`` built with ``axis_name``).

    budget: replaces ``regulariser`` by lambda_t * penalty and updates the controller in the state
    (training/budget_control.py); its MAC ratios and lambda join the metrics.
    """
    gumbel_key = jax.random.fold_in(state.rng, state.step)
    params = state.params

    def loss_fn(params):
        logits, new_model_state = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            rngs={GUMBEL_RNG: gumbel_key},
            mutable=["batch_stats"],
        )
        ce = jnp.mean(cross_entropy_loss(logits, batch["label"]))
        reg = regulariser(params) if budget is None else budget.regulariser(params, state.controller)
        return ce + reg, (logits, new_model_state, ce, reg)

    (loss, (logits, new_model_state, ce, reg)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis_name is not None:
        grads = lax.pmean(grads, axis_name)
    updates, new_opt_state = tx.update(grads, state.opt_state, params)
    metrics = {
        "loss": loss,
        "cross_entropy": ce,
        "regulariser": reg,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
    }
    if axis_name is not None:
        metrics = lax.pmean(metrics, axis_name)
    metrics["learning_rate"] = learning_rate_fn(state.step)
    new_params = optax.apply_updates(params, updates)
    controller = state.controller
    if budget is not None:  # from replicated params: the same update on every replica
        controller, budget_metrics = budget.update(controller, new_params, state.step)
        metrics |= budget_metrics
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        batch_stats=new_model_state["batch_stats"],
        opt_state=new_opt_state,
        controller=controller,
    )
    return new_state, metrics


def classification_sums(logits, labels, weight) -> dict:
    """Weighted sums of correct top-1 (and top-5, with >= 5 classes) predictions, loss and examples."""
    sums = {
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weight),
        "loss": jnp.sum(cross_entropy_loss(logits, labels) * weight),
        "count": jnp.sum(weight),
    }
    if logits.shape[-1] >= TOP_K:
        _, top = lax.top_k(logits, TOP_K)
        sums["correct_top5"] = jnp.sum(jnp.any(top == labels[..., None], axis=-1) * weight)
    return sums


def eval_step(variables, batch, *, model: nn.Module, axis_name: Optional[str] = AXIS):
    """``classification_sums`` of one batch (``batch['mask']`` zeroes the padding), summed over devices."""
    logits = model.apply(variables, batch["image"], train=False)
    weight = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
    sums = classification_sums(logits, batch["label"], weight)
    return lax.psum(sums, axis_name) if axis_name is not None else sums
