"""The operation-aware unit BN -> ReLU -> mask (and the plain BN used where no mask sits).

``MaskedBNReLU`` is the only place in the library that holds mask state. Its BatchNorm is written
out (rather than wrapping ``nn.BatchNorm``) because SCP gates the running-statistics update per
channel: only channels whose soft-mask sample has "keep" as its argmax update their mean and
variance (docs/method.md, "Equations"). Parameter and statistic names match ``nn.BatchNorm``
(params: scale, bias; batch_stats: mean, var).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from soft_prune_jax.method import masks as M

GUMBEL_RNG = "gumbel"
# Optional collection holding a fixed 0/1 keep-mask per unit ({'keep': (C,)}): evaluation then uses it
# instead of the hard mask computed from the BN parameters (surgery tests with rounded masks, Network
# Slimming's masks applied to the same network).
MASK_OVERRIDE = "mask_override"


class MaskedBNReLU(nn.Module):
    """BN -> ReLU -> channel mask.

    Attributes:
      mask: the mask hyper-parameters, or None for a plain BN -> ReLU (the dense baseline, and
        every compact model, whose pruned channels are gone physically).
      keep_at_least_one: at evaluation, keep the most alive channel (lowest z = (eps - beta) /
        |gamma|) if every channel would be pruned (plain chains such as VGG, where an empty layer
        makes the network constant).
      axis_name: the mapped axis over which batch statistics are averaged (synchronised BN).
      momentum, epsilon: as in ``nn.BatchNorm``.
    """

    mask: Optional[M.MaskConfig] = M.MaskConfig()
    keep_at_least_one: bool = False
    axis_name: Optional[str] = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    def prune_probability(self, scale, bias):
        q = M.deactivation_probability(scale, bias, self.mask.eps)
        return M.prune_probability(q, self.mask.k, self.mask.c)

    @nn.compact
    def __call__(self, x, train: bool = False):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if features == 0:  # a compact model may read an empty channel set
            return x

        mask = None
        if not train and self.has_variable(MASK_OVERRIDE, "keep"):
            mask = jnp.asarray(self.get_variable(MASK_OVERRIDE, "keep"), jnp.float32)
        elif self.mask is not None:
            pi = self.prune_probability(scale, bias)
            if train:
                mask = M.soft_mask(self.make_rng(GUMBEL_RNG), pi, self.mask.tau)
            elif self.keep_at_least_one:
                mask = M.hard_mask_keep_one(pi, M.deactivation_z(scale, bias, self.mask.eps))
            else:
                mask = M.hard_mask(pi)

        if train:
            reduce_axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, reduce_axes)
            mean_sq = jnp.mean(jnp.square(x32), reduce_axes)
            if self.axis_name is not None:
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            if not self.is_initializing():
                new_mean = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                new_var = self.momentum * ra_var.value + (1.0 - self.momentum) * var
                if mask is not None:
                    # Only channels whose sample says "keep" learn statistics (both mean and var).
                    keep = jax.lax.stop_gradient(mask) > 0.5
                    new_mean = jnp.where(keep, new_mean, ra_mean.value)
                    new_var = jnp.where(keep, new_var, ra_var.value)
                ra_mean.value, ra_var.value = new_mean, new_var
        else:
            mean, var = ra_mean.value, ra_var.value

        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        y = nn.relu((x - mean.astype(x.dtype)) * mul.astype(x.dtype) + bias.astype(x.dtype))
        if mask is not None:
            y = y * mask.astype(y.dtype)
        return y


class BatchNorm(nn.Module):
    """Plain BN (no ReLU, no mask) with the same names and optional synchronisation.

    Used where the method puts no mask: the last BN of post-activation residual branches.
    """

    axis_name: Optional[str] = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.BatchNorm(
            use_running_average=not train,
            axis_name=self.axis_name,
            momentum=self.momentum,
            epsilon=self.epsilon,
            scale_init=self.scale_init,
            name="bn",
        )(x)
