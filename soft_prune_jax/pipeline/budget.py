"""A MAC budget for SCP (config.target_macs_ratio) and the cost-aware penalty (config.cost_aware_penalty):
the glue between the cost model (``method.budget``), built from ``structure`` and ``flops``, and the
trainer (``training.budget``), which may import neither. A user's model brings its own cost model
(``user.cost``) and unit view to ``budget_for``, and its cut its own ratios to ``budget_record``
(``pipeline.user_model``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax

from soft_prune_jax.compact import surgery
from soft_prune_jax.compact.structure import describe
from soft_prune_jax.measure import flops
from soft_prune_jax.method import budget as B
from soft_prune_jax.method import latency as L
from soft_prune_jax.method.controller import ControllerConfig
from soft_prune_jax.methods import get_method
from soft_prune_jax.pipeline import latency as PL
from soft_prune_jax.pipeline.cut import surgery_round_to
from soft_prune_jax.pipeline.latency import latency_ratio, latency_target
from soft_prune_jax.training.budget import Budget


def model_cost(model: nn.Module, input_shape: Sequence[int]) -> B.CostModel:
    """The ``CostModel`` of a built-in architecture: its mask groups and its per-layer MACs."""
    return B.cost_model(describe(model).groups, flops.count(model, None, input_shape).layers)


def uses_budget(config) -> bool:
    return (
        config.get("target_macs_ratio") is not None
        or latency_target(config) is not None
        or bool(config.get("cost_aware_penalty"))
    )


def check_reachable(config, cost: B.CostModel, latency: L.LatencyModel) -> None:
    """A one-line error when even one channel per group is estimated slower than the latency budget."""
    field, value = latency_target(config)
    floor = float(L.latency_of_widths(cost, latency, {g: 1 for g in cost.groups})) / latency.dense_ms
    if latency_ratio(config, latency) < floor:
        nearest = floor if field == "target_latency_ratio" else floor * latency.dense_ms
        raise ValueError(
            f"config.{field}={value!r} cannot be reached on {latency.device}: one channel per group is estimated at "
            f"{floor:.3f} of the dense {latency.dense_ms:.2f} ms; expected at least {nearest:.3g}"
        )


def controller_config(config, latency: Optional[L.LatencyModel] = None) -> Optional[ControllerConfig]:
    """The controller of ``config.target_macs_ratio`` or of the latency budget (with ``latency``, the
    network's latency model); None: the paper's fixed lambda.
    ``budget_controller.ramp_fraction`` is turned into steps by the trainer (``Budget.bind``)."""
    target = latency_ratio(config, latency) if latency is not None else config.get("target_macs_ratio")
    if target is None:
        return None
    c = config.budget_controller
    return ControllerConfig(
        target=float(target),
        kp=float(c.kp),
        ki=float(c.ki),
        undershoot_boost=float(c.undershoot_boost),
        lambda_min=float(c.lambda_min),
        lambda_max=float(c.lambda_max),
        aim_above=float(c.aim_above),
    )


def training_budget(config, model: nn.Module, input_shape: Sequence[int]) -> Optional[Budget]:
    """The ``Budget`` the train phase runs with, or None when the config asks for neither option."""
    if not uses_budget(config):
        return None
    latency = None
    if latency_target(config) is not None:  # measured here, at the benchmark's batch, before training starts
        from soft_prune_jax.training.state import init_variables

        dense = model.clone(mask=None) if hasattr(model, "mask") else model
        variables = init_variables(dense, jax.random.key(0), input_shape)
        latency = PL.builtin_model(dense, variables, input_shape, PL.batch_size(config))[1]
    return budget_for(config, model_cost(model, input_shape), latency=latency)


def budget_for(config, cost: B.CostModel, view=None, latency: Optional[L.LatencyModel] = None) -> Budget:
    """The ``Budget`` of a network with the cost model ``cost``; ``view``: params -> its masked units
    where the params do not hold them (a user's model: ``UnitSet.unit_view``); ``latency``: its latency
    model, under a latency budget."""
    if latency_target(config) is not None:
        if latency is None:
            raise ValueError(f"config.{latency_target(config)[0]} needs the network's latency model: none was built")
        check_reachable(config, cost, latency)
    if not cost.group_sizes and config.get("target_macs_ratio") is not None:
        raise ValueError(
            f"config.target_macs_ratio={config.target_macs_ratio!r} cannot be reached: config.model="
            f"{config.model!r} has no prunable channel group; expected None"
        )
    mask = get_method(config.method).mask_config(config)
    controller = controller_config(config, latency)
    ramp = float(config.budget_controller.ramp_fraction) if controller is not None else 0.0
    return Budget(
        cost=cost,
        mask=mask,
        s=float(config.sparsity_s),
        initial_lambda=float(config.sparsity_lambda),
        cost_aware=bool(config.cost_aware_penalty),
        controller=controller,
        ramp_fraction=ramp,
        early_q=float(config.budget_controller.early_q) if controller is not None else None,
        view=view,
        latency=latency,
    )


def _ratio(model: nn.Module, kept: Mapping[str, Any], input_shape: Sequence[int]) -> float:
    compact = describe(model).rebuild(kept)
    return flops.count(compact, None, input_shape).macs / flops.count(model, None, input_shape).macs


def landing_record(config, model: nn.Module, variables, input_shape: Sequence[int], plans) -> Optional[dict]:
    """For prune.json under a MAC budget: the target, the MACs ratio of the trained hard-masked network,
    the ratio reached by the cut (``plans``: surgery's) and how many channels landing removed."""
    target = config.get("target_macs_ratio")
    if target is None:
        return None
    hard = surgery.plan(model, variables, round_to=surgery_round_to(config, input_shape, model))
    kept = {name: p.kept for name, p in plans.items()}
    return budget_record(
        config,
        _ratio(model, {name: p.kept for name, p in hard.items()}, input_shape),
        _ratio(model, kept, input_shape),
        int(sum(len(p.kept) for p in hard.values()) - sum(len(k) for k in kept.values())),
    )


def budget_record(config, hard_masked: float, reached: float, removed: int) -> dict:
    """prune.json's "budget" record: the target, the MACs ratio of the trained hard-masked network
    (cut without landing), the ratio the cut reached and how many channels landing removed."""
    return {
        "target_macs_ratio": float(config.target_macs_ratio),
        "hard_masked_macs_ratio": float(hard_masked),
        "reached_macs_ratio": float(reached),
        "removed_by_landing": int(removed),
    }
