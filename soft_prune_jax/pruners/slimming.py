"""Network Slimming (Liu et al., ICCV 2017): L1 on BN scales, then one global |scale| threshold.

The model has no masks while training; every BN scale starts at ``slimming.scale_init`` (0.5 in the
authors' code).
The cut keeps the channels of the units whose |scale| clears one threshold over the whole network:
``slimming.target_channel_ratio`` of them, or -- when ``slimming.target_macs_ratio`` is set -- the
most channels whose compact model has at most that fraction of the dense MACs (a comparison with SCP
at matched MACs). A group that would lose every channel keeps one by the cut's own rule (lowest z =
(eps - beta) / |gamma|, the default ``keep_one_rule``), as round_to's padding does.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.pruners.base import Config, MacsRatio, Masks, Method, Params
from soft_prune_jax.pruners.registry import register
from soft_prune_jax.scp import masks as M


def scale_penalty(params: Params) -> jax.Array:
    """sum |scale| over the masked (prunable) BN layers."""
    layers = M.masked_layers(params)
    return sum((jnp.sum(jnp.abs(layer["scale"])) for layer in layers.values()), jnp.zeros((), jnp.float32))


def regulariser(config: Config) -> Callable[[Params], jax.Array]:
    l1 = float(config.slimming.l1)
    return lambda params: l1 * scale_penalty(params)


def init_variables(config: Config, variables: Mapping[str, Any]) -> dict:
    """Every BN scale (masked or not) set to ``config.slimming.scale_init``; everything else unchanged."""
    scale_init = float(config.slimming.scale_init)

    def init(path, leaf):
        return jnp.full_like(leaf, scale_init) if getattr(path[-1], "key", None) == "scale" else leaf

    return {**variables, "params": jax.tree_util.tree_map_with_path(init, variables["params"])}


def scale_magnitudes(params: Params) -> dict[str, np.ndarray]:
    """{masked unit: |scale|}: what Network Slimming ranks channels by."""
    return {name: np.abs(np.asarray(layer["scale"])) for name, layer in M.masked_layers(params).items()}


def global_threshold_masks(params: Params, keep_ratio: float) -> Masks:
    """One global |scale| threshold keeping ``keep_ratio`` of the masked channels."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"slimming.target_channel_ratio={keep_ratio!r} is invalid: expected a number in (0, 1]")
    layers = scale_magnitudes(params)
    if not layers:
        raise ValueError("the model has no units to prune: expected BN layers after its convs (traced.masked)")
    scores = np.concatenate(list(layers.values()))
    keep = max(1, int(round(keep_ratio * scores.size)))
    threshold = np.sort(scores)[::-1][keep - 1]
    return {name: (score >= threshold).astype(np.float32) for name, score in layers.items()}


def masks_for_macs(params: Params, target_macs_ratio: float, macs_ratio: MacsRatio, iterations: int = 30) -> Masks:
    """The global-threshold masks keeping the most channels whose compact model has at most
    ``target_macs_ratio`` of the dense MACs (bisection on the keep ratio; MACs grow with it)."""
    low, high = 0.0, 1.0  # macs_ratio at keep ratio 1 is the dense model's; find the largest under target
    for _ in range(iterations):
        mid = (low + high) / 2
        if mid > 0 and macs_ratio(global_threshold_masks(params, mid)) <= target_macs_ratio:
            low = mid
        else:
            high = mid
    return global_threshold_masks(params, max(low, 1e-6))


def surgery_masks(config: Config, variables: Mapping[str, Any], macs_ratio: MacsRatio) -> Masks:
    target_macs = config.slimming.get("target_macs_ratio")
    if target_macs is not None:
        return masks_for_macs(variables["params"], float(target_macs), macs_ratio)
    return global_threshold_masks(variables["params"], float(config.slimming.target_channel_ratio))


def settings(config: Config) -> dict:
    target_macs = config.slimming.get("target_macs_ratio")
    if target_macs is not None:  # a comparison with SCP, not Liu et al.'s rule: say so wherever it is shown
        cut = f"global |scale| threshold at matched MACs (at most {float(target_macs):g} of the dense MACs)"
    else:
        cut = f"global |scale| threshold keeping {float(config.slimming.target_channel_ratio):g} of the channels"
    return {"l1": float(config.slimming.l1), "scale_init": float(config.slimming.scale_init), "cut": cut}


METHOD = register(
    Method(
        name="slimming",
        label="Network Slimming",
        init_variables=init_variables,
        regulariser=regulariser,
        surgery_masks=surgery_masks,
        settings=settings,
    )
)
