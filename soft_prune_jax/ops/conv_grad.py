"""Convolution gradients by formulation: a ``jax.custom_vjp`` whose weight gradient is computed the
way that is fast for the shape, and whose input gradient is the autodiff of the forward formulation.

Why: XLA:CPU computes a conv's weight gradient as one more convolution whose "kernel" is the
output gradient (as large as the feature map) and whose output is only kh x kw: its Eigen kernel
runs that shape far below the forward conv's rate, worst on wide feature maps with few channels
(``scripts/profile_conv_grads.py`` times forward, input-gradient and weight-gradient convs of
every layer shape of a model side by side). The input gradient is a transposed conv that XLA
runs at about the forward rate, so it stays XLA's own.

Weight-gradient formulations, all equal to XLA's own weight gradient up to float summation order:

* ``'autodiff'``: ``jax.vjp`` of the forward formulation (XLA's conv gradient for 'xla').
* ``'chunked_im2col'``: the batch in chunks of a few examples (``lax.scan``); per chunk the kh*kw
  shifted views side by side (patches) and one GEMM patches^T @ dy, accumulated. A chunk's patches
  stay within ``CHUNK_BYTES`` (cache-sized), so the patch copy never streams through memory, which
  is what makes one whole-batch im2col slow here.
* ``'matmul'``: 1x1 kernels: the (strided) input view^T @ dy, one GEMM.

The input gradient of a strided kxk conv is XLA's transposed conv with a dilated input, slow on
this CPU; ``choose_input_grad`` sends it to the autodiff of the im2col formulation instead.

``choose_weight_grad`` is the shape rule 'auto' follows (fixed, no timing at call time).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from soft_prune_jax.ops.conv_geometry import shifted_views

WEIGHT_GRAD_FORMULATIONS = ("auto", "autodiff", "chunked_im2col", "matmul")
# Largest patch buffer of one chunk: about an L2 cache, so building the patches does not stream
# through main memory; the chunk is the largest divisor of the batch within it (at least 1 example).
CHUNK_BYTES = 4 * 2**20
Pads = tuple[tuple[int, int], tuple[int, int]]


def choose_weight_grad(kernel_shape: Sequence[int], forward: str) -> str:
    """The weight-gradient formulation 'auto' uses: a forward already on patches ('im2col', tiny
    spatial outputs) differentiates them directly; a 1x1 kernel -> 'matmul'; else 'chunked_im2col'."""
    if forward == "im2col":
        return "autodiff"
    if tuple(kernel_shape[:2]) == (1, 1):
        return "matmul"
    return "chunked_im2col"


def choose_input_grad(kernel_shape: Sequence[int], strides: Sequence[int], forward: str) -> str:
    """The forward formulation whose autodiff gives the input gradient: a strided kxk conv's XLA
    gradient (a transposed conv with a dilated input) -> 'im2col' (dy @ kernel^T, then the patches
    added back in place); everything else differentiates its own forward formulation."""
    if forward == "xla" and tuple(strides) != (1, 1) and tuple(kernel_shape[:2]) != (1, 1):
        return "im2col"
    return forward


def chunk_size(batch: int, bytes_per_example: int, limit: int = CHUNK_BYTES) -> int:
    """The largest divisor of ``batch`` whose chunk of patches fits in ``limit`` bytes (at least 1)."""
    best = 1
    for n in range(1, batch + 1):
        if batch % n == 0 and n * bytes_per_example <= limit:
            best = n
    return best


def _patches_t_dy(x, dy, window, strides, pads):
    """sum over (n, h, w) of patches (n, h, w, kh*kw*cin) times dy (n, h, w, cout): (kh*kw*cin, cout)."""
    patches = jnp.concatenate(shifted_views(x, window, strides, pads, dy.shape[1:3]), axis=-1)
    return lax.dot_general(
        patches, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), preferred_element_type=jnp.result_type(x, dy)
    )


def chunked_im2col_weight_grad(x, dy, window, strides, pads, chunk_bytes: int = CHUNK_BYTES):
    """d loss / d kernel (kh, kw, cin, cout) from the input x and the output gradient dy."""
    (kh, kw), cin, cout = window, x.shape[-1], dy.shape[-1]
    patch_bytes = math.prod(dy.shape[1:3]) * kh * kw * cin * jnp.dtype(x.dtype).itemsize
    n = chunk_size(x.shape[0], patch_bytes, chunk_bytes)
    if n == x.shape[0]:
        return _patches_t_dy(x, dy, window, strides, pads).reshape(kh, kw, cin, cout)
    chunks = x.shape[0] // n

    def accumulate(total, pair):
        return total + _patches_t_dy(pair[0], pair[1], window, strides, pads), None

    xs = (x.reshape((chunks, n) + x.shape[1:]), dy.reshape((chunks, n) + dy.shape[1:]))
    total, _ = lax.scan(accumulate, jnp.zeros((kh * kw * cin, cout), jnp.result_type(x, dy)), xs)
    return total.reshape(kh, kw, cin, cout)


def matmul_weight_grad(x, dy, window, strides, pads):
    """d loss / d kernel of a 1x1 conv: the strided input view^T @ dy."""
    if tuple(window) != (1, 1):
        raise ValueError(f"weight_grad='matmul' needs a 1x1 kernel, got {window[0]}x{window[1]}")
    (view,) = shifted_views(x, (1, 1), strides, pads, dy.shape[1:3])
    dw = lax.dot_general(view, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), preferred_element_type=jnp.result_type(x, dy))
    return dw[None, None]


_WEIGHT_GRADS = {"chunked_im2col": chunked_im2col_weight_grad, "matmul": matmul_weight_grad}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv(x, kernel, forward: Callable, input_forward: Callable, strides: tuple[int, int], pads: Pads, weight_grad: str):
    """``forward(x, kernel)`` (a conv formulation with these strides and pads) whose input gradient is
    the autodiff of ``input_forward`` (an equal formulation, see ``choose_input_grad``) and whose weight
    gradient uses ``weight_grad`` (not 'auto': resolve it with ``choose_weight_grad`` first)."""
    return forward(x, kernel)


def _conv_fwd(x, kernel, forward, input_forward, strides, pads, weight_grad):
    return forward(x, kernel), (x, kernel)


def _conv_bwd(forward, input_forward, strides, pads, weight_grad, residuals, dy):
    x, kernel = residuals
    if weight_grad == "autodiff":
        return jax.vjp(forward, x, kernel)[1](dy)
    _, input_vjp = jax.vjp(lambda x_: input_forward(x_, kernel), x)
    (dx,) = input_vjp(dy)
    dw = _WEIGHT_GRADS[weight_grad](x, dy, kernel.shape[:2], strides, pads)
    return dx, dw.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def check_weight_grad(weight_grad: str) -> None:
    if weight_grad not in WEIGHT_GRAD_FORMULATIONS:
        raise ValueError(
            f"weight_grad={weight_grad!r} is invalid: expected one of {', '.join(WEIGHT_GRAD_FORMULATIONS)}"
        )
