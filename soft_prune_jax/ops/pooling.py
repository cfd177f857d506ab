"""2x2 max pooling (stride 2, VALID) as a reshape and a max, whose gradient XLA:CPU runs fast.

``flax.linen.max_pool`` lowers to ``reduce_window``, whose gradient is a ``select_and_scatter``
that XLA:CPU runs several times slower than the ReLU backward of the same feature map. Non-
overlapping windows need no
window machinery: crop to even sizes, reshape to (n, h/2, 2, w/2, 2, c), take the max over the
two window axes. Same forward values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``; the same
gradient wherever a window's maximum is unique. Where several entries tie for the maximum (e.g. a
window of ReLU zeros) the gradient is split among them instead of going to the first; behind a
ReLU those entries have zero derivative, so parameter gradients do not change.
"""

from __future__ import annotations

import jax.numpy as jnp


def max_pool_2x2(x):
    """(n, h, w, c) -> (n, h // 2, w // 2, c): the max of every 2x2 window, stride 2, VALID."""
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 needs a 4-D NHWC input, got shape {x.shape}")
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))
