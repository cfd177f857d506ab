"""Building blocks of the built-in models: a conv and a dense head that tolerate empty channel sets."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.ops import fast_conv

he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Bias(nn.Module):
    """Only the bias of a conv whose every input channel was pruned (same param path as the conv's)."""

    features: int

    @nn.compact
    def __call__(self):
        return self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)


def conv(x, features: int, kernel_size: Sequence[int] | int, strides: int = 1, name: Optional[str] = None,
         dtype: Any = jnp.float32, use_bias: bool = False, padding: Any = "SAME"):
    """A bias-free He-normal conv that also handles empty channel sets exactly.

    Must be called inside a compact module. With 0 input channels the conv's output is exactly
    zero (or its bias), and with 0 output channels it is an empty array; no kernel is created,
    which is what a compact model whose layer lost every channel needs.
    """
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if x.shape[-1] == 0 or features == 0:
        if padding == "SAME":
            spatial = tuple(-(-d // strides) for d in x.shape[1:-1])
        else:  # VALID
            spatial = tuple((d - k) // strides + 1 for d, k in zip(x.shape[1:-1], ks))
        out = jnp.zeros(x.shape[:1] + spatial + (features,), x.dtype)
        if use_bias and features:  # a conv that reads nothing outputs its bias
            out = out + _Bias(features, name=name)()
        return out
    # fast_conv.Conv has nn.Conv's parameters; its 'auto' formulation avoids XLA:CPU's pathological
    # conv shapes (e.g. 3x3 on 2x2x512 inputs: ~140x slower than im2col + matmul).
    return fast_conv.Conv(features, ks, strides=strides, padding=padding, use_bias=use_bias,
                          kernel_init=he_normal, dtype=dtype, name=name)(x)


def _allow_empty(init: Callable) -> Callable:
    """An initializer that returns an empty array for a zero-size shape instead of dividing by 0."""

    def wrapped(key, shape, dtype=jnp.float32):
        if 0 in shape:
            return jnp.zeros(shape, dtype)
        return init(key, shape, dtype)

    return wrapped


def classifier(x, num_classes: int, name: str = "head"):
    """The dense head; exact when every feature was pruned (then it outputs its bias)."""
    return nn.Dense(num_classes, kernel_init=_allow_empty(nn.initializers.lecun_normal()), name=name)(x)
