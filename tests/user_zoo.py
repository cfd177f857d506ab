"""Models written as a user of Flax would write them, named by configs as ``user_zoo:NAME``.

``resnet_tiny`` is examples/flax_resnet.py's ResNet (written as Flax's examples/imagenet/models.py:
BatchNorm with axis_name='batch', scale_init zeros on a block's last BN, projection shortcuts where
the shape changes) at toy size.
``CNN`` is an NNX network; ``MnistCNN`` is Flax's NNX MNIST example, called with ``rngs``. ``NoUnits``
has no BN -> ReLU unit; ``Deterministic`` is applied with a ``deterministic`` flag instead of ``train``.
Not a test module: the pipeline imports it by name.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
from flax import nnx

from examples.flax_resnet import ResNet

ModuleDef = Any


def resnet_tiny(num_classes: int, **kwargs) -> ResNet:
    """A factory, as a model zoo would offer it: the example's ResNet at 8 filters."""
    kwargs.setdefault("num_filters", 8)
    return ResNet(stage_sizes=kwargs.pop("stage_sizes", (1, 1)), num_classes=num_classes, **kwargs)


class CNN(nnx.Module):
    def __init__(self, num_classes: int, width: int = 6, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.bn2 = nnx.BatchNorm(2 * width, rngs=rngs)
        self.head = nnx.Linear(2 * width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(axis=(1, 2)))


class NoUnits(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class Deterministic(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=deterministic)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


NOT_A_MODULE = 3


def not_a_module(num_classes: int):
    return {"num_classes": num_classes}


class Tiny(nn.Module):
    """conv (1x1) -> BN -> ReLU -> mean -> Dense: small enough to compute the masked step by hand."""

    num_classes: int
    width: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Conv(self.width, (1, 1), use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(y))
        return nn.Dense(self.num_classes)(y.mean(axis=(1, 2)))


class WrongInput(nn.Module):
    """Flattens to a fixed CIFAR size: cannot be called on Fashion-MNIST images."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], 32 * 32 * 3)))


class MnistCNN(nnx.Module):
    """Flax's NNX MNIST example CNN at toy width: its ``__call__`` takes ``rngs`` and draws dropout from it."""

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(4, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.25)
        self.conv2 = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(8, rngs=rngs)
        self.linear1 = nnx.Linear(7 * 7 * 8, 16, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.25)
        self.linear2 = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs):
        pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        x = pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)
