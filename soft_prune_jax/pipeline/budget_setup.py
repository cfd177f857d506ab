"""A MAC or latency budget for SCP (config.target_macs_ratio, target_latency_ratio/ms) and the cost-aware
penalty (config.cost_aware_penalty): the glue between the cost model of the traced graph
(``traced.graph_cost``, over ``scp.cost``), the latency model (``pipeline.latency_setup``) and the trainer
(``training.budget_control``). The cut brings its ratios to ``budget_record`` (``pipeline.model_path``).
"""

from __future__ import annotations

from typing import Optional

from soft_prune_jax.pipeline.latency_setup import latency_ratio, latency_target
from soft_prune_jax.pruners import get_method
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import latency_model as L
from soft_prune_jax.scp.controller import ControllerConfig
from soft_prune_jax.traced.latency_landing import unreachable
from soft_prune_jax.training.budget_control import Budget


def uses_budget(config) -> bool:
    return (
        config.get("target_macs_ratio") is not None
        or latency_target(config) is not None
        or bool(config.get("cost_aware_penalty"))
    )


def check_reachable(config, cost: B.CostModel, latency: L.LatencyModel) -> None:
    """A one-line error when even one channel per group is estimated slower than the latency budget."""
    field, value = latency_target(config)
    floor = unreachable(cost, latency, latency_ratio(config, latency))
    if floor is not None:
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


def budget_for(config, cost: B.CostModel, view=None, latency: Optional[L.LatencyModel] = None) -> Budget:
    """The ``Budget`` of a network with the cost model ``cost`` (``traced.graph_cost``); ``view``: params -> its
    masked units (``UnitSet.unit_view``); ``latency``: its latency model, under a latency budget."""
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


def budget_record(config, hard_masked: float, reached: float, removed: int) -> dict:
    """prune.json's "budget" record: the target, the MACs ratio of the trained hard-masked network
    (cut without landing), the ratio the cut reached and how many channels landing removed."""
    return {
        "target_macs_ratio": float(config.target_macs_ratio),
        "hard_masked_macs_ratio": float(hard_masked),
        "reached_macs_ratio": float(reached),
        "removed_by_landing": int(removed),
    }
