"""The training state and what builds it: variables, the LR schedule, the optimizer and its decay mask."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pure pytree of arrays (checkpointed as is)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # replicated base key; the step's Gumbel key is fold_in(rng, step)
    controller: Any = None  # the MAC-budget controller's state (training.budget_control), None without a budget

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module) -> Callable:
    # One jitted init per model (modules are frozen dataclasses, hence hashable). Init runs once, and
    # on the CPU compiling it costs far more than running it: LLVM's optimisation of every weight's
    # threefry-and-erfinv kernel. XLA's cheapest backend optimisation compiles it several times faster
    # and draws the same weights up to float32 rounding (tests/test_train.py). Only the init: the
    # training steps keep the full optimisation they are run thousands of times with.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(functools.partial(model.init, train=False), compiler_options=options)


def init_variables(model: nn.Module, key, input_shape: Sequence[int]) -> dict:
    """He-normal weights, BN scale 1 / bias 0, from one key (jitted: big models init fast)."""
    return _jitted_init(model)({"params": key}, jnp.zeros((1,) + tuple(input_shape), jnp.float32))


def create_train_state(
    rng, variables: Mapping[str, Any], tx: optax.GradientTransformation, controller: Any = None
) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=rng,
        controller=controller,
    )


def steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
    steps = num_train_examples // batch_size
    if steps < 1:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_train_examples} training examples: "
            "expected batch_size <= num_train_examples"
        )
    return steps


def create_learning_rate_fn(
    base_learning_rate: float, boundaries_epochs: Iterable[float], decay: float, steps_per_epoch: int
) -> optax.Schedule:
    """Piecewise constant in steps: multiply by ``decay`` at each epoch boundary."""
    boundaries = {int(round(e * steps_per_epoch)): float(decay) for e in boundaries_epochs}
    return optax.piecewise_constant_schedule(float(base_learning_rate), boundaries)


def weight_decay_mask(params) -> Any:
    """True on conv/dense kernels and BN scales, False on every bias (docs/method.md, "Conventions")."""

    def decays(path, _):
        return getattr(path[-1], "key", None) in ("kernel", "scale")

    return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(config, learning_rate_fn: optax.Schedule, params) -> optax.GradientTransformation:
    """L2 weight decay added to the gradient (d/dw of wd/2 ||w||^2), then SGD with Nesterov momentum."""
    return optax.chain(
        optax.add_decayed_weights(float(config.weight_decay), mask=weight_decay_mask(params)),
        optax.sgd(learning_rate_fn, momentum=float(config.momentum), nesterov=bool(config.nesterov)),
    )
