"""A PI controller on log(lambda) that steers the MACs of the hard-masked network to a budget.

With SCP as published lambda is fixed and the MACs it cuts are known only after training. Here the
penalty weight is lambda_t = exp(log_lambda_t), updated once per training step from the relative
MACs r_t of the current hard-masked network:

    aim        = target + aim_above * (1 - target)                a little above the budget
    target_t   = 1 - (1 - aim) * min(1, step / ramp_steps)       the aim, reached gradually
    e_t        = r_t - target_t                                   > 0: too many MACs, push harder
    g_t        = 1 if e_t >= 0 else undershoot_boost              below the budget: back off faster
    integral  += g_t * ki * e_t                                   clipped to [log lambda_min, log lambda_max]
    log_lambda = integral + g_t * kp * e_t                        clipped likewise

The ramp keeps the error small while pruning lags behind lambda (channels die a while after the
penalty rises), so the integral does not wind up and overshoot the budget; clipping the integral to
the same range as log lambda is the anti-windup. The gains are larger below the budget because the
plant is one-way: a channel the penalty killed rarely comes back when lambda falls, so too much
push costs accuracy for good, while too little is corrected by landing on the budget after training.
For the same reason the controller aims a little above the budget: channels already on their way out
keep dying for a while after lambda falls, so a controller aimed at the budget itself ends below it,
with channels gone for nothing; aimed above it, the network ends between the aim and the budget and
landing removes the least alive of the rest, so the cut lands on the budget.
The caller chooses r_t. ``training.budget_control`` gives the MACs with every channel of q >= early_q gone
(a little ahead of the hard masks' q >= c, since channels die in bursts after lambda rises), not the
expected MACs: pi saturates at sigmoid(k delta) < 1 for dead channels, so the expected MACs of a
network stay above its hard-masked MACs.

The state is a small pytree of scalars (checkpointed with the training state); ``update`` is pure
and jit-able, and identical on every replica when its inputs are (replicated params).
"""

from __future__ import annotations

import dataclasses
import math

import flax
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """target: the budget as a fraction of the dense MACs (or latency), in (0, 1] (1: nothing to cut).
    kp, ki: proportional and integral gains on the error in MAC ratio (ki per step), >= 0.
    undershoot_boost: both gains are multiplied by this while the MACs are below the target, >= 1.
    ramp_steps: steps over which the target falls from 1 to the aim (0 = at once).
    aim_above: the controller steers to ``target + aim_above * (1 - target)``, in [0, 1).
    lambda_min, lambda_max: the range of lambda, 0 < min <= max.
    """

    target: float
    kp: float = 2.0
    ki: float = 0.01
    undershoot_boost: float = 4.0
    ramp_steps: int = 0
    lambda_min: float = 1e-6
    lambda_max: float = 1.0
    aim_above: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.target, (int, float)) and 0.0 < self.target <= 1.0):
            raise ValueError(f"target={self.target!r} is invalid: expected a number in (0, 1]")
        if not (0.0 < self.lambda_min <= self.lambda_max < math.inf):
            raise ValueError(
                f"lambda range [{self.lambda_min!r}, {self.lambda_max!r}] is invalid: "
                "expected 0 < lambda_min <= lambda_max < inf"
            )
        if not 0.0 <= self.aim_above < 1.0:
            raise ValueError(f"aim_above={self.aim_above!r} is invalid: expected a number in [0, 1)")

    @property
    def aim(self) -> float:
        """The MAC ratio the controller steers to: the budget plus a share of what it prunes."""
        return self.target + self.aim_above * (1.0 - self.target)


@flax.struct.dataclass
class ControllerState:
    log_lambda: jax.Array  # the lambda used by the next step, in log space
    integral: jax.Array  # the integral term (log space)
    error: jax.Array  # the last error r - target_t (for logs)

    @property
    def lam(self) -> jax.Array:
        return jnp.exp(self.log_lambda)


def init_state(config: ControllerConfig, initial_lambda: float) -> ControllerState:
    """Starts at ``initial_lambda`` (clipped into the controller's range)."""
    log_lam = math.log(min(max(float(initial_lambda), config.lambda_min), config.lambda_max))
    return ControllerState(
        log_lambda=jnp.asarray(log_lam, jnp.float32),
        integral=jnp.asarray(log_lam, jnp.float32),
        error=jnp.zeros((), jnp.float32),
    )


def scheduled_target(config: ControllerConfig, step) -> jax.Array:
    """What the controller steers to at ``step``: 1 at step 0, falling linearly to ``config.aim`` at
    ``ramp_steps``."""
    if config.ramp_steps <= 0:
        return jnp.asarray(config.aim, jnp.float32)
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / config.ramp_steps, 1.0)
    return 1.0 - (1.0 - config.aim) * progress


def update(config: ControllerConfig, state: ControllerState, macs_ratio, step) -> ControllerState:
    """One controller step from the current MAC ratio (MACs / dense MACs) at training step ``step``."""
    low, high = math.log(config.lambda_min), math.log(config.lambda_max)
    error = jnp.asarray(macs_ratio, jnp.float32) - scheduled_target(config, step)
    gain = jnp.where(error >= 0, 1.0, config.undershoot_boost)
    integral = jnp.clip(state.integral + gain * config.ki * error, low, high)
    return ControllerState(
        log_lambda=jnp.clip(integral + gain * config.kp * error, low, high), integral=integral, error=error
    )
