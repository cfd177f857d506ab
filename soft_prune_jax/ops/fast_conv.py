"""2-D convolution formulations that avoid XLA:CPU's slow conv shapes.

XLA:CPU lowers ``lax.conv_general_dilated`` to one Eigen kernel that is fast on most shapes but
pathological on a few (measured on a 2-core x86 CPU, jax 0.10.2, float32, batch 64; see
``launch/benchmark.py --per_layer`` to re-measure):

* 3x3 SAME on a 2x2 (or 1x1) input, as in VGG-16's last group on CIFAR: 2x2x512 -> 512 takes
  ~600-1100 ms (1-2 GFLOP/s) against ~5-11 ms (100-240 GFLOP/s) as im2col + one matmul.
* A 3x3 conv with at most 64 output positions in the whole batch (batch 1 on a 4x4x512 input)
  runs ~1.5x faster as im2col (2.1 -> 1.4 ms).
* 1x1 convs with 64+ channels run at 40-130 GFLOP/s as convs and at 80-220 GFLOP/s as a plain
  matmul (e.g. 8x28x28x512 -> 128: 14.3 -> 3.7 ms); with 16-32 channels the two are even.
* Everywhere else XLA's conv beats im2col, often by 2-30x (32x32x16 -> 16: 3.5 ms vs 110 ms: the
  kh*kw patch copy dominates when channels are few), so 'auto' keeps it.

Why: XLA:CPU (jax 0.10) hands a conv either to YNNPACK (a "ynn_fusion" in the compiled HLO;
~145 GFLOP/s on 16x16x32 and 8x8x64 3x3 convs) or to its Eigen conv (~65-120 GFLOP/s with 16+
channels, far less with fewer). Convs with fewer than 32 channels (ResNet-56's first stage, most
pruned CIFAR layers) and the 2x2-input convs stay on Eigen; the 2x2 ones hit its pathology.
Disabling YNNPACK (``--xla_cpu_experimental_ynn_fusion_type=``) puts every conv on Eigen.

So ``conv2d`` offers several formulations of the same convolution, all numerically equal to
``lax.conv_general_dilated`` (up to float summation order):

* ``'xla'``: ``lax.conv_general_dilated`` itself.
* ``'im2col'``: pad, gather the kh*kw shifted (strided) views of the input side by side along
  the channel axis, and multiply by the kernel reshaped to (kh*kw*in, out): one big GEMM.
  Costs kh*kw times the input's memory, so it only pays where the spatial size is tiny.
* ``'matmul'``: for 1x1 kernels: a strided slice and one GEMM (no patch copy).

``'auto'`` picks by a fixed shape rule (no timing at call time), see ``choose_formulation``, and only
where JAX computes on the CPU: every rule here was measured on XLA:CPU, so on a GPU or TPU 'auto' is
XLA's own conv with its own gradients (name a formulation to force one anywhere).
Gradients: the kernel's gradient uses the formulation ``ops.conv_grad`` picks for the shape (XLA:CPU's
own weight-gradient conv is several times slower than the forward conv on most shapes), the
input's gradient is the autodiff of the forward formulation; ``weight_grad='autodiff'`` differentiates
the forward formulation alone.
``Conv`` is a drop-in linen module (param 'kernel' of shape (kh, kw, in, out), optional 'bias')
that uses ``conv2d``, so checkpoints of ``nn.Conv`` layers load unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from soft_prune_jax.ops import conv_grad
from soft_prune_jax.ops.conv_geometry import Padding, explicit_padding, output_spatial, pair, shifted_views

FORMULATIONS = ("auto", "auto_any_batch", "xla", "im2col", "matmul")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# im2col wins by 10-100x when the output has at most this many spatial positions (2x2); at 3x3 it
# is a wash and from 4x4 up XLA's own conv is faster (it avoids the kh*kw patch copy)...
IM2COL_MAX_OUTPUT_POSITIONS = 4
# ...unless the GEMM is this small in all (batch * positions rows), as at batch 1.
IM2COL_MAX_OUTPUT_ROWS = 64


def choose_formulation(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides=1,
    padding: Padding = "SAME",
    any_batch: bool = False,
) -> str:
    """The formulation ``'auto'`` uses for these shapes (NHWC input, HWIO kernel).

    The rule (measured, module docstring): 1x1 kernel -> 'matmul'; an output of at most
    ``IM2COL_MAX_OUTPUT_POSITIONS`` spatial positions, or of at most ``IM2COL_MAX_OUTPUT_ROWS``
    positions in the whole batch -> 'im2col'; otherwise 'xla'. ``any_batch`` (the formulation
    'auto_any_batch'): the shapes are one example's of a computation run at any batch size (a
    per-example function under ``jax.vmap``, as an exported artifact), so the whole-batch rule is left
    out: at batch 64 an im2col chosen for batch 1 runs slower than XLA's conv.
    """
    strides = pair(strides, "strides")
    kh, kw = kernel_shape[:2]
    if (kh, kw) == (1, 1):
        return "matmul"
    pads = explicit_padding(input_shape[1:3], (kh, kw), strides, padding)
    ho, wo = output_spatial(input_shape[1:3], (kh, kw), strides, pads)
    small_batch = not any_batch and input_shape[0] * ho * wo <= IM2COL_MAX_OUTPUT_ROWS
    if ho * wo <= IM2COL_MAX_OUTPUT_POSITIONS or small_batch:
        return "im2col"
    return "xla"


def _im2col(x, kernel, strides, pads, out_hw):
    kh, kw, cin, cout = kernel.shape
    patches = jnp.concatenate(shifted_views(x, (kh, kw), strides, pads, out_hw), axis=-1)
    # Patch channels are ordered (i, j, c), which is exactly the HWIO kernel's row-major order.
    out = jnp.dot(
        patches.reshape(-1, kh * kw * cin),
        kernel.reshape(kh * kw * cin, cout),
        preferred_element_type=jnp.result_type(x, kernel),
    )
    return out.reshape(x.shape[0], out_hw[0], out_hw[1], cout)


def _matmul_1x1(x, kernel, strides, pads, out_hw):
    (view,) = shifted_views(x, (1, 1), strides, pads, out_hw)
    return jnp.einsum("nhwc,co->nhwo", view, kernel[0, 0], preferred_element_type=jnp.result_type(x, kernel))


def _xla(x, kernel, strides, pads, out_hw):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMENSION_NUMBERS)


_FORWARDS = {"xla": _xla, "im2col": _im2col, "matmul": _matmul_1x1}


def conv2d(x, kernel, strides=1, padding: Padding = "SAME", formulation: str = "auto", weight_grad: str = "auto"):
    """A 2-D convolution, NHWC input and HWIO kernel (as ``nn.Conv``), no dilation, one group.

    Equal to ``lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=
    ('NHWC', 'HWIO', 'NHWC'))`` for every formulation; empty channel sets give exact zeros (no
    input channels) or an empty array (no output channels).

    Args:
      x: (batch, height, width, in_channels).
      kernel: (kh, kw, in_channels, out_channels).
      strides: an int or an (sh, sw) pair.
      padding: 'SAME', 'VALID' or ((top, bottom), (left, right)).
      formulation: one of ``FORMULATIONS``; 'auto' follows ``choose_formulation``.
      weight_grad: how the kernel's gradient is computed, one of ``conv_grad.WEIGHT_GRAD_FORMULATIONS``;
        'auto' follows ``conv_grad.choose_weight_grad``, 'autodiff' differentiates the forward
        formulation itself. The input's gradient is always the autodiff of the forward formulation.
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is invalid: expected one of {', '.join(FORMULATIONS)}")
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(
            f"conv2d needs a 4-D NHWC input and a 4-D HWIO kernel, got shapes {x.shape} and {kernel.shape}"
        )
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"input channels {x.shape[-1]} != kernel input channels {kernel.shape[2]} "
            f"(shapes {x.shape}, {kernel.shape})"
        )
    strides = pair(strides, "strides")
    window = tuple(kernel.shape[:2])
    pads = explicit_padding(x.shape[1:3], window, strides, padding)
    out_hw = output_spatial(x.shape[1:3], window, strides, pads)
    dtype = jnp.result_type(x, kernel)
    if x.shape[-1] == 0 or kernel.shape[-1] == 0 or 0 in out_hw or x.shape[0] == 0:
        return jnp.zeros((x.shape[0],) + out_hw + (kernel.shape[-1],), dtype)
    if formulation in ("auto", "auto_any_batch") and jax.default_backend() != "cpu":  # XLA:CPU's rules (docstring)
        formulation, weight_grad = "xla", ("autodiff" if weight_grad == "auto" else weight_grad)
    if formulation in ("auto", "auto_any_batch"):
        formulation = choose_formulation(x.shape, kernel.shape, strides, pads, formulation == "auto_any_batch")
    if formulation == "matmul" and window != (1, 1):
        raise ValueError(f"formulation='matmul' needs a 1x1 kernel, got {window[0]}x{window[1]}")
    conv_grad.check_weight_grad(weight_grad)
    if weight_grad == "matmul" and window != (1, 1):
        raise ValueError(f"weight_grad='matmul' needs a 1x1 kernel, got {window[0]}x{window[1]}")
    if weight_grad == "auto":
        weight_grad = conv_grad.choose_weight_grad(kernel.shape, formulation)
    forward = functools.partial(_FORWARDS[formulation], strides=strides, pads=pads, out_hw=out_hw)
    if weight_grad == "autodiff":
        return forward(x, kernel)
    input_formulation = conv_grad.choose_input_grad(kernel.shape, strides, formulation)
    input_forward = functools.partial(_FORWARDS[input_formulation], strides=strides, pads=pads, out_hw=out_hw)
    return conv_grad.conv(x, kernel, forward, input_forward, strides, pads, weight_grad)


class Conv(nn.Module):
    """A bias-optional 2-D conv with ``nn.Conv``'s parameter names and shapes, computed by ``conv2d``.

    Params: 'kernel' (kh, kw, in, out) and, with ``use_bias``, 'bias' (out,) -- so a checkpoint of
    an ``nn.Conv`` restores into it unchanged.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Union[int, Sequence[int]] = 1
    padding: Padding = "SAME"
    use_bias: bool = False
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    dtype: Any = jnp.float32
    formulation: str = "auto"
    weight_grad: str = "auto"

    @nn.compact
    def __call__(self, x):
        kh, kw = pair(tuple(self.kernel_size), "kernel_size")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
        y = conv2d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            self.strides,
            self.padding,
            self.formulation,
            self.weight_grad,
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


@contextlib.contextmanager
def flax_conv_formulation(formulation: Optional[str] = "auto"):
    """Within this context, every applied ``nn.Conv`` (2-D, undilated, one group) runs through ``conv2d``,
    and every ``Conv`` of this module uses ``formulation`` instead of its own.

    For measuring existing models with another formulation without touching their code (the
    parameters are read from the bound module, so it only changes ``apply``, not ``init``).
    ``None`` leaves all convs alone; 'xla' leaves ``nn.Conv`` alone and sets ``Conv`` to 'xla'.
    """
    if formulation is not None and formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is invalid: expected None or one of {', '.join(FORMULATIONS)}")

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if type(module) is Conv and context.method_name == "__call__" and formulation is not None:
            x, kernel = args[0], module.get_variable("params", "kernel")
            y = conv2d(
                x.astype(module.dtype),
                kernel.astype(module.dtype),
                module.strides,
                module.padding,
                formulation,
                module.weight_grad,
            )
            return y + module.get_variable("params", "bias").astype(module.dtype) if module.use_bias else y
        if (
            formulation in (None, "xla")
            or type(module) is not nn.Conv
            or context.method_name != "__call__"
            or not module.has_variable("params", "kernel")
            or module.feature_group_count != 1
            or module.kernel_dilation not in (None, 1, (1, 1))
            or module.input_dilation not in (None, 1, (1, 1))
            or args[0].ndim != 4
        ):
            return next_fun(*args, **kwargs)
        x = args[0]
        kernel = module.get_variable("params", "kernel")
        strides = module.strides if module.strides is not None else 1
        padding = module.padding
        if isinstance(padding, int):
            padding = ((padding, padding),) * 2
        elif not isinstance(padding, str):
            padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
        elif padding.upper() not in ("SAME", "VALID"):  # CIRCULAR etc.: leave to nn.Conv
            return next_fun(*args, **kwargs)
        dtype = module.dtype or jnp.result_type(x, kernel)
        y = conv2d(x.astype(dtype), kernel.astype(dtype), strides, padding, formulation)
        if module.use_bias:
            y = y + module.get_variable("params", "bias").astype(dtype)
        return y

    with nn.intercept_methods(interceptor):
        yield
