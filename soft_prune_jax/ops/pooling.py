"""2x2 max pooling (stride 2, VALID) as a reshape and a max, whose gradient XLA:CPU runs fast.

``flax.linen.max_pool`` lowers to ``reduce_window``, whose gradient is a ``select_and_scatter``
that XLA:CPU runs several times slower than the ReLU backward of the same feature map. Non-
overlapping windows need no window machinery: crop to even sizes, reshape to
(n, h/2, 2, w/2, 2, c), take the max over the two window axes. Same forward values as
``nn.max_pool(x, (2, 2), strides=(2, 2))``.

The gradient is a ``custom_vjp``: the forward pass records, per window, which of its four entries
is the maximum (the first on ties, as ``select_and_scatter`` picks), and the backward pass sends the
window's cotangent to that entry alone. Autodiff of ``jnp.max`` instead builds the mask
``x == max(x)`` in the backward pass, and under ``jit`` XLA may compute the two sides of that
equality in different fusions: a last-bit difference then sends a window's gradient nowhere (a
small VGG's first-conv kernel gradient came out wrong at batch 2; tests/test_models.py keeps that case).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _windows(x):
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    # (n, h/2, w/2, c, 4): the four entries of each window last
    return jnp.transpose(x.reshape(n, h // 2, 2, w // 2, 2, c), (0, 1, 3, 5, 2, 4)).reshape(n, h // 2, w // 2, c, 4)


@jax.custom_vjp
def _pool(x):
    return jnp.max(_windows(x), axis=-1)


def _pool_fwd(x):
    windows = _windows(x)
    first = jnp.argmax(windows, axis=-1)  # one entry per window, computed once
    return jnp.take_along_axis(windows, first[..., None], axis=-1)[..., 0], (first, x.shape)


def _pool_bwd(residuals, g):
    first, shape = residuals
    n, h, w, c = shape
    hh, ww = h // 2, w // 2
    onehot = (jnp.arange(4) == first[..., None]).astype(g.dtype) * g[..., None]  # (n, h/2, w/2, c, 4)
    dx = jnp.transpose(onehot.reshape(n, hh, ww, c, 2, 2), (0, 1, 4, 2, 5, 3)).reshape(n, hh * 2, ww * 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h - hh * 2), (0, w - ww * 2), (0, 0))),)


_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool_2x2(x):
    """(n, h, w, c) -> (n, h // 2, w // 2, c): the max of every 2x2 window, stride 2, VALID."""
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 needs a 4-D NHWC input, got shape {x.shape}")
    return _pool(x)
