"""Small Flax NNX CNNs for the prune_model tests: ``ZOO`` is name -> (constructor(rngs), input shape)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class CNN(nnx.Module):
    """conv-BN-ReLU x2, average pool, flatten -> Linear (the NNX tutorial's CNN with BN)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(6, rngs=rngs)
        self.conv2 = nnx.Conv(6, 8, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(8, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.linear = nnx.Linear(3 * 3 * 8, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        x = self.dropout(x.reshape((x.shape[0], -1)))
        return self.linear(x)


class Block(nnx.Module):
    """Post-activation residual block with a projection when the width changes."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
        self.proj = nnx.Conv(cin, cout, (1, 1), use_bias=False, rngs=rngs) if cin != cout else None

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu((self.proj(x) if self.proj is not None else x) + y)


class ResNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 4, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.blocks = nnx.List([Block(4, 4, rngs), Block(4, 6, rngs)])
        self.head = nnx.Linear(6, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


class MobileNet(nnx.Module):
    """Depthwise-separable blocks plus a squeeze-and-excitation gate."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 6, (3, 3), use_bias=False, rngs=rngs)
        self.bn0 = nnx.BatchNorm(6, rngs=rngs)
        self.dw = nnx.Conv(6, 6, (3, 3), feature_group_count=6, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(6, rngs=rngs)
        self.se1 = nnx.Linear(6, 2, rngs=rngs)
        self.se2 = nnx.Linear(2, 6, rngs=rngs)
        self.pw = nnx.Conv(6, 8, (1, 1), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn0(self.stem(x)))
        x = nnx.relu(self.bn1(self.dw(x)))
        gate = nnx.sigmoid(self.se2(nnx.relu(self.se1(jnp.mean(x, axis=(1, 2))))))
        x = x * gate[:, None, None, :]
        x = nnx.relu(self.bn2(self.pw(x)))
        return self.head(jnp.mean(x, axis=(1, 2)))


ZOO = {
    "cnn": (CNN, (2, 6, 6, 3)),
    "resnet": (ResNet, (2, 6, 6, 3)),
    "mobilenet": (MobileNet, (2, 6, 6, 3)),
}
