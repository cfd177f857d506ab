"""What a train step does differently under a MAC budget or the cost-aware penalty.

``Budget`` replaces the method's regulariser by lambda_t * penalty(params), where penalty is SCP's
sum_c (beta_c + s |gamma_c|), each unit weighted by the MACs its channels cost when ``cost_aware``
(``scp.cost.cost_aware_penalty``), and lambda_t comes from the controller state in the
TrainState (``scp.controller``), or is fixed without a target. After each step the controller is
updated from the hard-masked MACs of the new params; the params are replicated, so every replica
computes the same update. The step's metrics gain lambda and the expected, hard-masked and target
MAC ratios (progress lines and TensorBoard show them). Under a latency budget (``latency``: the
network's ``scp.latency_model.LatencyModel``) the controller steers the estimated latency ratio of the
same keep masks instead, and the metrics gain it.

A model's params do not hold its masked units (``traced.masked`` inserts them from outside), so the
``Budget`` carries a ``view``: params -> the units as masked layers (``UnitSet.unit_view``), which the
penalty and the MAC count read. The cost model says which group each unit's channels belong to
(``scp.cost.CostModel.units``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from soft_prune_jax.scp import controller as C
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import latency_model as L
from soft_prune_jax.scp import masks as M


@dataclasses.dataclass(frozen=True)
class Budget:
    """cost: the network's ``CostModel``; mask: its mask config; s: SCP's penalty ratio;
    initial_lambda: lambda at step 0 (the fixed lambda without a controller);
    controller: None = fixed lambda; ramp_fraction: the part of the phase over which the
    controller's target falls from 1 to the budget (``bind`` turns it into steps);
    early_q: the controller counts a channel as gone once its q reaches this (``budget.early_keep``):
    channels die in bursts a while after lambda rises, so the controller must see them coming; the
    channels between early_q and c that are still kept at the end are the first that landing removes
    (highest z). None (or c = 1 - delta) = the hard masks themselves;
    view: params -> {masked layer: {'scale', 'bias'}} (``UnitSet.unit_view``); None = the params
    hold the masked layers themselves (hand-made params in tests)."""

    cost: B.CostModel
    mask: M.MaskConfig
    s: float
    initial_lambda: float
    cost_aware: bool = False
    controller: Optional[C.ControllerConfig] = None
    ramp_fraction: float = 0.0
    early_q: Optional[float] = None
    view: Optional[Callable[[Any], Any]] = None
    latency: Optional[L.LatencyModel] = None  # a latency budget: the controller steers its estimate, not MACs

    def units(self, params):
        """The masked units of ``params``, as the cost model and the penalty read them."""
        return params if self.view is None else self.view(params)

    def bind(self, total_steps: int) -> Budget:
        """This budget with the controller's ramp in steps of a phase of ``total_steps``."""
        if self.controller is None:
            return self
        ramp = int(round(self.ramp_fraction * total_steps))
        return dataclasses.replace(self, controller=dataclasses.replace(self.controller, ramp_steps=ramp))

    def init_state(self) -> Optional[C.ControllerState]:
        return None if self.controller is None else C.init_state(self.controller, self.initial_lambda)

    def lam(self, state: Optional[C.ControllerState]) -> jax.Array:
        if state is None:
            return jnp.asarray(self.initial_lambda, jnp.float32)
        return jax.lax.stop_gradient(state.lam)

    def penalty(self, params) -> jax.Array:
        if self.cost_aware:
            return B.cost_aware_penalty(self.units(params), self.cost, self.mask, self.s)
        return M.sparsity_penalty(self.units(params), self.s)

    def regulariser(self, params, state: Optional[C.ControllerState]) -> jax.Array:
        return self.lam(state) * self.penalty(params)

    def update(self, state: Optional[C.ControllerState], params, step) -> tuple[Optional[C.ControllerState], dict]:
        """(next controller state, metrics) after a step that produced ``params``."""
        early_q = self.early_q if self.controller is not None else None
        ratios = B.macs_ratios(self.cost, self.units(params), self.mask, early_q)
        metrics = {
            "lambda": self.lam(state),
            "macs_expected_ratio": ratios["expected"],
            "macs_hard_ratio": ratios["hard"],
        }
        if self.latency is not None:  # the estimate of scp.latency_model over the same keep masks
            ratios = L.latency_ratios(self.cost, self.latency, self.units(params), self.mask, early_q)
            metrics["latency_expected_ratio"] = ratios["expected"]
            metrics["latency_hard_ratio"] = ratios["hard"]
        if state is None:
            return state, metrics
        kind = "latency" if self.latency is not None else "macs"
        metrics[f"{kind}_target_ratio"] = C.scheduled_target(self.controller, step)
        signal = ratios.get("early", ratios["hard"])
        metrics[f"{kind}_signal_ratio"] = signal
        return C.update(self.controller, state, signal, step), metrics
