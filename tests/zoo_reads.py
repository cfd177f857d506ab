"""Plain Flax networks whose BN-ReLU units read a shared value (tests/test_graph_reads.py), written as
users write them (nn.Conv, nn.BatchNorm, nn.relu), and plain twins of the built-in pre-activation
ResNet and DenseNet with the built-in module names, so the built-in variables load by path.

Every class takes ``num_classes`` (``models.user.build`` passes it) and a ``train`` flag."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx


def _bn(train: bool, name=None):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class StemPreAct(nn.Module):
    """conv -> BN -> ReLU stem whose output is the residual stream, then pre-activation blocks: each
    block's first BN-ReLU reads a value that is another unit's output (zero where that one drops)."""

    num_classes: int = 3
    width: int = 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(_bn(train)(nn.Conv(self.width, (3, 3), use_bias=False)(x)))
        for _ in range(2):
            y = nn.Conv(self.width, (3, 3), use_bias=False)(nn.relu(_bn(train)(x)))
            y = nn.Conv(self.width, (3, 3), use_bias=False)(nn.relu(_bn(train)(y)))
            x = x + y
        return nn.Dense(self.num_classes)(nn.relu(_bn(train)(x)).mean((1, 2)))


class StemDenseNet(nn.Module):
    """conv -> BN -> ReLU stem, then DenseNet layers (BN -> ReLU -> conv on the concatenation)."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(_bn(train)(nn.Conv(4, (3, 3), use_bias=False)(x)))
        for _ in range(2):
            h = nn.Conv(3, (3, 3), use_bias=False)(nn.relu(_bn(train)(x)))
            x = jnp.concatenate([x, h], axis=-1)
        return nn.Dense(self.num_classes)(nn.relu(_bn(train)(x)).mean((1, 2)))


class NnxStemPreAct(nnx.Module):
    """``StemPreAct`` in NNX."""

    def __init__(self, num_classes: int = 3, width: int = 6, *, rngs: nnx.Rngs):
        conv = lambda: nnx.Conv(width, width, (3, 3), use_bias=False, rngs=rngs)  # noqa: E731
        norm = lambda: nnx.BatchNorm(width, rngs=rngs)  # noqa: E731
        self.stem, self.stem_bn = nnx.Conv(3, width, (3, 3), use_bias=False, rngs=rngs), norm()
        self.bn1, self.conv1, self.bn2, self.conv2 = norm(), conv(), norm(), conv()
        self.final = norm()
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem_bn(self.stem(x)))
        y = self.conv2(nnx.relu(self.bn2(self.conv1(nnx.relu(self.bn1(x))))))
        x = x + y
        return self.head(nnx.relu(self.final(x)).mean((1, 2)))


def _conv(width: int, kernel: int, stride: int, name: str):
    pad = (kernel - 1) // 2  # the built-ins' symmetric padding (models.common.symmetric)
    pads = ((pad, kernel - 1 - pad),) * 2
    return nn.Conv(width, (kernel, kernel), (stride, stride), padding=pads, use_bias=False, name=name)


class PlainPreActBlock(nn.Module):
    """models/resnet_cifar.PreActBlock (basic) as plain Flax: a first block's BN-ReLU (``bn1``) is
    shared with the shortcut, other blocks' (``masked_bn1``) reads the residual stream."""

    width: int
    stride: int = 1
    first: bool = False
    projection: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        u = nn.relu(_bn(train, "bn1" if self.first else "masked_bn1")(x))
        shortcut = x
        if self.first:
            shortcut = _conv(self.width, 1, self.stride, "proj")(u) if self.projection else u
        h = nn.relu(_bn(train, "masked_bn2")(_conv(self.width, 3, self.stride, "conv1")(u)))
        return shortcut + _conv(self.width, 3, 1, "conv2")(h)


class PlainPreActResNet(nn.Module):
    """models/resnet_cifar.PreActResNet (basic blocks) as plain Flax, with its module names."""

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    stem_width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(self.stem_width, 3, 1, "stem")(x)
        b, stream = 0, self.stem_width
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for i in range(size):
                stride = 2 if s > 0 and i == 0 else 1
                projection = i == 0 and (stride != 1 or stream != width)
                x = PlainPreActBlock(width, stride, i == 0, projection, name=f"block{b}")(x, train)
                b, stream = b + 1, width
        x = nn.relu(_bn(train, "masked_bn_final")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean((1, 2)))


class PlainDenseNet(nn.Module):
    """models/densenet.DenseNet as plain Flax, with its module names."""

    num_blocks: int
    layers_per_block: int
    growth_rate: int
    stem_width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(self.stem_width, 3, 1, "stem")(x)
        unit = 0
        for b in range(self.num_blocks):
            for _ in range(self.layers_per_block):
                h = nn.relu(_bn(train, f"masked_bn{unit}")(x))
                x = jnp.concatenate([x, _conv(self.growth_rate, 3, 1, f"conv{unit}")(h)], axis=-1)
                unit += 1
            if b < self.num_blocks - 1:
                h = nn.relu(_bn(train, f"masked_bn{unit}")(x))
                x = nn.avg_pool(_conv(x.shape[-1], 1, 1, f"conv{unit}")(h), (2, 2), strides=(2, 2))
                unit += 1
        x = nn.relu(_bn(train, f"masked_bn{unit}")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean((1, 2)))
