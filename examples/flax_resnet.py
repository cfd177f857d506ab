"""A ResNet written as a Flax user writes one (the style of Flax's examples/imagenet/models.py), for
training with SCP from a config without changing a line of it:

    python launch/train.py --config=configs/fashion_mnist.py --config.model=examples.flax_resnet:fmnist_resnet \
        --workdir=workdirs/user_resnet_fmnist

BatchNorm names the axis 'batch' (synchronised statistics under pmap / shard_map, as in Flax's
example); the last BN of each block starts at scale 0. SCP masks the first BN -> ReLU of every
block (their channels are private to the block); the residual stream is kept whole.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


class ResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    num_classes: int
    num_filters: int = 16
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False, dtype=jnp.float32)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name="batch")
        x = conv(self.num_filters, (3, 3), name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = ResNetBlock(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def fmnist_resnet(num_classes: int, stage_sizes: Sequence[int] = (1, 1, 1), num_filters: int = 16) -> ResNet:
    """Three stages of one block (16, 32, 64 filters) for 28x28 images: a factory, as a model zoo offers."""
    return ResNet(stage_sizes=tuple(stage_sizes), num_classes=num_classes, num_filters=num_filters)
