"""What every built-in architecture shares: the swap-point type, He-normal init, symmetric padding,
and the conv / BN factories with the paper's settings."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

ModuleDef = Any  # a module class or a functools.partial of one (Flax's examples/imagenet convention)

he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def symmetric(kernel: int) -> tuple:
    """(k - 1) // 2 before, the rest after, at every stride (PyTorch's padding=k // 2): a stride-2 3x3
    conv then reads the pixel grid of the 1x1 stride-2 projection it is added to (XLA's SAME pads
    (0, 1) at stride 2 on even sizes)."""
    lo = (kernel - 1) // 2
    return ((lo, kernel - 1 - lo),) * 2


def layers(module, train: bool):
    """(conv, norm) factories of a module: bias-free He-normal convs, BN with the paper's momentum."""
    conv = functools.partial(module.conv, use_bias=False, kernel_init=he_normal)
    norm = functools.partial(module.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    return conv, norm


def conv_layer(conv, width: int, kernel: int, stride: int, name: str):
    """A square ``kernel`` conv to ``width`` channels at ``stride``, padded symmetrically."""
    return conv(width, (kernel, kernel), strides=(stride, stride), padding=symmetric(kernel), name=name)


def max_pool_2x2(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))
