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


SYMMETRIC = "SYMMETRIC"


def resolve_padding(padding: Any, window: Sequence[int]) -> Any:
    """'SAME', 'VALID' or explicit ((lo, hi), ...) pads; SYMMETRIC becomes explicit pads.

    SYMMETRIC pads (k - 1) // 2 before and the rest after, at every stride (the reference code's
    pad_beg / pad_end, and PyTorch's padding=k // 2). At stride 1 it equals SAME for odd kernels; at
    stride 2 on an even size XLA's SAME pads (0, 1) instead, which centres a 3x3 window one pixel
    off the 1x1 stride-2 projection it is added to.
    """
    if isinstance(padding, str) and padding.upper() == SYMMETRIC:
        return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in window)
    if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID"):
        raise ValueError(
            f"padding={padding!r} is invalid: expected 'SYMMETRIC', 'SAME', 'VALID' or ((lo, hi), (lo, hi))"
        )
    if isinstance(padding, str):
        return padding.upper()
    return tuple(tuple(int(v) for v in p) for p in padding)


def output_spatial(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Any):
    """Output height/width of a conv (or pool) with this padding."""
    if padding == "SAME":
        return tuple(-(-d // s) for d, s in zip(spatial, strides))
    pads = ((0, 0),) * len(window) if padding == "VALID" else padding
    return tuple((d + lo + hi - k) // s + 1 for d, k, s, (lo, hi) in zip(spatial, window, strides, pads))


def conv(
    x,
    features: int,
    kernel_size: Sequence[int] | int,
    strides: int = 1,
    name: Optional[str] = None,
    dtype: Any = jnp.float32,
    use_bias: bool = False,
    padding: Any = SYMMETRIC,
):
    """A bias-free He-normal conv that also handles empty channel sets exactly.

    Must be called inside a compact module. ``padding``: SYMMETRIC (default, see
    ``resolve_padding``), 'SAME', 'VALID' or explicit pads. With 0 input channels the conv's output
    is exactly zero (or its bias), and with 0 output channels it is an empty array; no kernel is
    created, which is what a compact model whose layer lost every channel needs.
    """
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    stride_pair = (strides,) * len(ks)
    pads = resolve_padding(padding, ks)
    if x.shape[-1] == 0 or features == 0:
        spatial = output_spatial(x.shape[1:-1], ks, stride_pair, pads)
        out = jnp.zeros(x.shape[:1] + spatial + (features,), x.dtype)
        if use_bias and features:  # a conv that reads nothing outputs its bias
            out = out + _Bias(features, name=name)()
        return out
    # fast_conv.Conv has nn.Conv's parameters; its 'auto' formulation avoids XLA:CPU's pathological
    # conv shapes (e.g. 3x3 on 2x2x512 inputs: ~140x slower than im2col + matmul).
    return fast_conv.Conv(
        features, ks, strides=strides, padding=pads, use_bias=use_bias, kernel_init=he_normal, dtype=dtype, name=name
    )(x)


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
