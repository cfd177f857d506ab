"""The SCP mask math (docs/method.md, "Equations") as pure functions: arrays in, arrays out.

Nothing here holds Flax state; every function is jit- and vmap-friendly. The pytree helpers at
the bottom walk a whole Flax ``params`` tree and find the masked BatchNorm layers by name: every
operation-aware unit in this library is a module whose name starts with ``MASKED_PREFIX``.

    z_c  = (eps - beta_c) / |gamma_c|                    standardised threshold (lower = more alive)
    q_c  = Phi(z_c)                                      deactivation probability
    pi_c = sigmoid(k (q_c - c)),  c = 1 - delta          pruning probability
    m_c  ~ RelaxedBernoulli(keep = 1 - pi_c, tau)        soft mask (training)
    m_c  = [pi_c < 0.5]                                   hard mask (evaluation, the cut)
    keep-one fallback and round_to padding rank channels by z: pi saturates at sigmoid(k delta)
    once q rounds to 1, so every dead channel has the same pi, but z still orders them.
    R    = sum_layers sum_c (beta_c + s |gamma_c|)        sparsity penalty
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

MASKED_PREFIX = "masked_bn"
GUMBEL_RNG = "gumbel"  # the rng stream of the soft masks' relaxed-Bernoulli noise in a training step
# Guards the division by |gamma| (|gamma| + 1e-8, as the reference does), so q is defined at gamma = 0.
_SCALE_FLOOR = 1e-8


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Hyper-parameters of the operation-aware mask (paper defaults).

    eps: activation level below which a channel counts as off, in (0, 1).
    delta: CDF threshold; a channel is pruned when q >= c = 1 - delta, delta in (0, 1).
    k: sharpness of the logistic that turns q into pi, > 0.
    tau: Gumbel-Softmax temperature, > 0.
    """

    eps: float = 0.05
    delta: float = 0.05
    k: float = 20.0
    tau: float = 0.5

    def __post_init__(self):
        for name, low, high in (("eps", 0.0, 1.0), ("delta", 0.0, 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low < value < high):
                raise ValueError(f"mask {name}={value!r} is invalid: expected a number in ({low}, {high})")
        for name in ("k", "tau"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"mask {name}={value!r} is invalid: expected a finite number > 0")

    @property
    def c(self) -> float:
        return 1.0 - self.delta


def deactivation_z(scale, bias, eps: float = 0.05):
    """z = (eps - bias) / |scale|, the argument of q's normal CDF: lower = more alive.

    Unlike q and pi it does not saturate, so it orders channels that q rounds to 1 (or 0) alike.
    The division uses |scale| + 1e-8, so z is finite (or +-inf, never NaN off bias = eps) at scale = 0.
    """
    return (eps - bias) / (jnp.abs(scale) + _SCALE_FLOOR)


def deactivation_probability(scale, bias, eps: float = 0.05):
    """q = P(ReLU(y) <= eps) for y ~ N(bias, scale^2): Phi((eps - bias) / |scale|).

    Stable at scale = 0: the division uses |scale| + 1e-8, so q is 0 or 1 (or 1/2 at bias = eps)
    instead of NaN. Uses ``jax.scipy.stats.norm.cdf`` (erfc-based, accurate in both tails).
    """
    return jax.scipy.stats.norm.cdf(deactivation_z(scale, bias, eps))


def prune_probability(q, k: float = 20.0, c: float = 0.95):
    """pi = P(mask = 0) = sigmoid(k (q - c))."""
    return jax.nn.sigmoid(k * (q - c))


def _log_keep_odds(prune_prob):
    """log(1 - pi) - log(pi), computed without log(0) at pi in {0, 1}."""
    tiny = jnp.finfo(jnp.result_type(prune_prob, jnp.float32)).tiny
    return jnp.log(jnp.maximum(1.0 - prune_prob, tiny)) - jnp.log(jnp.maximum(prune_prob, tiny))


def soft_mask(key, prune_prob, tau: float = 0.5):
    """One relaxed-Bernoulli (binary Gumbel-Softmax) keep-mask sample per channel.

    m = softmax([log(1-pi) + g1, log(pi) + g0] / tau)[keep]
      = sigmoid((log(1-pi) - log(pi) + g1 - g0) / tau),  g0, g1 ~ Gumbel(0, 1).
    Written as a sigmoid of the logit difference, so it stays finite (and differentiable) when
    pi is exactly 0 or 1. Values lie in [0, 1]; ``m > 0.5`` is the sample's argmax == keep.
    """
    g1, g0 = jax.random.gumbel(key, (2,) + jnp.shape(prune_prob), dtype=jnp.result_type(prune_prob, jnp.float32))
    return jax.nn.sigmoid((_log_keep_odds(prune_prob) + g1 - g0) / tau)


def hard_mask(prune_prob):
    """1 where pi < 0.5 (keep), else 0; same dtype as ``prune_prob``."""
    return (prune_prob < 0.5).astype(jnp.result_type(prune_prob, jnp.float32))


def hard_mask_keep_one(prune_prob, z=None):
    """``hard_mask`` that never empties a layer: if every channel would go, keep the most alive one.

    The most alive channel has the lowest ``z`` (``deactivation_z``), or the lowest pi when no z is
    given. Pass z: every channel whose q rounds to 1 has the same pi = sigmoid(k delta), and argmin
    then picks the first index. Used in plain chains (VGG, the masked ImageNet stem), where an empty
    layer would make the network constant (our decision, docs/method.md).
    """
    mask = hard_mask(prune_prob)
    order = prune_prob if z is None else z
    fallback = jax.nn.one_hot(jnp.argmin(order), prune_prob.shape[-1], dtype=mask.dtype)
    return jnp.where(jnp.any(mask > 0), mask, fallback)


def layer_penalty(scale, bias, s: float = 2.0):
    """sum_c (bias_c + s |scale_c|) for one masked BN layer. The bias term is linear on purpose."""
    return jnp.sum(bias) + s * jnp.sum(jnp.abs(scale))


# ---------------------------------------------------------------------------------------------
# Pytree-level helpers over a whole Flax params tree.
# ---------------------------------------------------------------------------------------------

Path = tuple[str, ...]


def path_str(path: Path) -> str:
    return "/".join(path)


def iter_masked_layers(params: Mapping[str, Any], _prefix: Path = ()) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """Yields (path, {'scale', 'bias', ...}) for every masked BN layer, in a stable (sorted) order."""
    for name in sorted(params):
        value = params[name]
        if not isinstance(value, Mapping):
            continue
        path = _prefix + (name,)
        if name.startswith(MASKED_PREFIX) and "scale" in value and "bias" in value:
            yield path, value
        else:
            yield from iter_masked_layers(value, path)


def masked_layers(params) -> dict[str, Mapping[str, Any]]:
    """{'block/masked_bn1': {'scale': ..., 'bias': ...}, ...} for every masked BN layer."""
    params = params.get("params", params) if isinstance(params, Mapping) else params
    return {path_str(path): layer for path, layer in iter_masked_layers(params)}


def sparsity_penalty(params, s: float = 2.0):
    """The SCP regulariser: sum over masked BN layers of sum_c (bias_c + s |scale_c|)."""
    layers = masked_layers(params)
    if not layers:
        return jnp.zeros((), jnp.float32)
    return sum(layer_penalty(layer["scale"], layer["bias"], s) for layer in layers.values())


def layer_probabilities(params, config: MaskConfig = MaskConfig()) -> dict[str, dict[str, jax.Array]]:
    """Per masked BN layer: {'q': ..., 'pi': ..., 'hard_mask': ...} (plain ``hard_mask``)."""
    out = {}
    for name, layer in masked_layers(params).items():
        q = deactivation_probability(layer["scale"], layer["bias"], config.eps)
        pi = prune_probability(q, config.k, config.c)
        out[name] = {"q": q, "pi": pi, "hard_mask": hard_mask(pi)}
    return out


def hard_masks(params, config: MaskConfig = MaskConfig()) -> dict[str, jax.Array]:
    """{layer name: hard mask} for every masked BN layer."""
    return {name: probs["hard_mask"] for name, probs in layer_probabilities(params, config).items()}


def kept_channels(masks: Mapping[str, Any]) -> dict[str, Any]:
    """Per-layer kept/total counts and totals from a {name: 0/1 mask} dict.

    Returns {'per_layer': {name: (kept, total)}, 'kept': int, 'total': int, 'ratio': kept/total}.
    """
    per_layer = {name: (int(np.sum(np.asarray(m) > 0)), int(np.size(m))) for name, m in masks.items()}
    kept = sum(k for k, _ in per_layer.values())
    total = sum(t for _, t in per_layer.values())
    return {"per_layer": per_layer, "kept": kept, "total": total, "ratio": kept / total if total else 1.0}


def expected_kept_channels(params, config: MaskConfig = MaskConfig()):
    """sum over masked layers of sum_c (1 - pi_c): a smooth, jit-able count for progress output."""
    probs = layer_probabilities(params, config)
    if not probs:
        return jnp.zeros((), jnp.float32)
    return sum(jnp.sum(1.0 - p["pi"]) for p in probs.values())
