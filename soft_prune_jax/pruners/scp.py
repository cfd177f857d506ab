"""SCP (Kang & Han, ICML 2020): soft operation-aware masks, trained jointly with the sparsity penalty.

The cut keeps the units' own hard masks [pi < 0.5] (``surgery_masks`` returns None); the keep-one
fallback and round_to padding use the cut's ranking (lowest z, i.e. lowest pi with ties broken). With
``config.target_macs_ratio`` (a MAC budget), a trained network whose hard-masked MACs still exceed
the budget loses its least alive channels (highest z) until it fits (``budget.land_on_budget``).
Under a latency budget the same landing runs on the estimated latency (``pipeline.latency_setup.land``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from soft_prune_jax.pruners.base import Config, MacsRatio, Masks, Method, Params
from soft_prune_jax.pruners.registry import register
from soft_prune_jax.scp import cost as budget
from soft_prune_jax.scp import masks as M


def mask_config(config: Config) -> M.MaskConfig:
    return M.MaskConfig(**{k: float(v) for k, v in config.mask.items()})


def regulariser(config: Config) -> Callable[[Params], jax.Array]:
    """lambda * sum over masked layers of sum_c (beta_c + s |gamma_c|)."""
    lam, s = float(config.sparsity_lambda), float(config.sparsity_s)
    return lambda params: lam * M.sparsity_penalty(params, s)


def surgery_masks(config: Config, variables: Mapping[str, Any], macs_ratio: MacsRatio) -> Optional[Masks]:
    """None (the model's own hard masks) without a budget; with one, those masks landed on it."""
    target = config.get("target_macs_ratio")
    if target is None and any(config.get(f) is not None for f in ("target_latency_ratio", "target_latency_ms")):
        target = 1.0  # a latency budget: the pipeline's macs_ratio is the estimated latency over its aim
    if target is None:
        return None
    mask = mask_config(config)
    layers = M.masked_layers(variables["params"])
    hard = {
        name: np.asarray(M.hard_mask(p["pi"])) for name, p in M.layer_probabilities(variables["params"], mask).items()
    }
    z = {name: np.asarray(M.deactivation_z(layer["scale"], layer["bias"], mask.eps)) for name, layer in layers.items()}
    return budget.land_on_budget(hard, z, macs_ratio, float(target))[0]


def settings(config: Config) -> dict:
    out = {
        "sparsity_lambda": float(config.sparsity_lambda),
        "sparsity_s": float(config.sparsity_s),
        "mask": {k: float(v) for k, v in config.mask.items()},
    }
    if config.get("cost_aware_penalty"):
        out["cost_aware_penalty"] = True
    for field in ("target_macs_ratio", "target_latency_ratio", "target_latency_ms"):
        if config.get(field) is not None:  # lambda above is then only where the controller starts
            out[field] = float(config[field])
            out["budget_controller"] = {k: float(v) for k, v in config.budget_controller.items()}
    return out


METHOD = register(
    Method(
        name="scp",
        label="SCP",
        mask_config=mask_config,
        regulariser=regulariser,
        surgery_masks=surgery_masks,
        settings=settings,
    )
)
