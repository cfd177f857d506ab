"""Small linen CNNs written the way users write them, for the prune_model tests.

Each entry of ``ZOO`` is name -> (constructor, input shape). Widths are tiny; every network runs in
evaluation mode as ``model.apply(variables, x, train=False)``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


def bn(train: bool, **kw):
    # Flax's ImageNet example: synchronised BN over the 'batch' axis (unused in evaluation).
    return partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name="batch", **kw)


class Chain(nn.Module):
    """conv-BN-ReLU x2, max pool, flatten -> Dense head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for w in (6, 8):
            x = nn.Conv(w, (3, 3), use_bias=False)(x)
            x = nn.relu(bn(train)()(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(5)(x)


class ResNetBlock(nn.Module):
    """Flax examples/imagenet's post-activation block."""

    filters: int
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = bn(train)
        residual = x
        y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False, name="conv_proj")(residual)
            residual = norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


class BottleneckResNetBlock(nn.Module):
    filters: int
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = bn(train)
        residual = x
        y = nn.Conv(self.filters, (1, 1), use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(y)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters * 4, (1, 1), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = nn.Conv(self.filters * 4, (1, 1), self.strides, use_bias=False, name="conv_proj")(residual)
            residual = norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """Flax examples/imagenet's ResNet, tiny."""

    stage_sizes: Sequence[int] = (1, 1)
    block_cls: Any = ResNetBlock
    num_filters: int = 4
    num_classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.num_filters, (3, 3), use_bias=False, name="conv_init")(x)
        x = nn.relu(bn(train)(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class PreActBlock(nn.Module):
    filters: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(bn(train)()(x))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        y = nn.relu(bn(train)()(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        return x + y


class PreActResNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(6, (3, 3), use_bias=False)(x)
        x = PreActBlock(6)(x, train)
        x = PreActBlock(6)(x, train)
        x = nn.relu(bn(train)()(x))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class DenseNet(nn.Module):
    """DenseNet-style: every layer reads the concatenation of everything before it."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), use_bias=False)(x)
        for _ in range(3):
            h = nn.relu(bn(train)()(x))
            h = nn.Conv(3, (3, 3), use_bias=False)(h)
            x = jnp.concatenate([x, h], axis=-1)
        x = nn.relu(bn(train)()(x))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class DepthwiseSeparable(nn.Module):
    """MobileNet v1 blocks: depthwise 3x3 (feature_group_count = channels) then pointwise 1x1."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(bn(train)()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        for w in (8, 10):
            x = nn.Conv(x.shape[-1], (3, 3), feature_group_count=x.shape[-1], use_bias=False)(x)
            x = nn.relu(bn(train)()(x))
            x = nn.Conv(w, (1, 1), use_bias=False)(x)
            x = nn.relu(bn(train)()(x))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class InvertedResidual(nn.Module):
    """MobileNet v2: expand 1x1 -> ReLU6 -> depthwise -> ReLU6 -> linear 1x1 projection (+ identity)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = bn(train)()(nn.Conv(4, (3, 3), use_bias=False)(x))
        for _ in range(2):
            h = nn.relu6(bn(train)()(nn.Conv(12, (1, 1), use_bias=False)(x)))
            h = nn.Conv(12, (3, 3), feature_group_count=12, use_bias=False)(h)
            h = nn.relu6(bn(train)()(h))
            h = bn(train)()(nn.Conv(4, (1, 1), use_bias=False)(h))
            x = x + h
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class GroupedConv(nn.Module):
    """A grouped conv (2 groups of 3 channels): its channels cannot go one by one."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(bn(train)()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        x = nn.relu(bn(train)()(nn.Conv(6, (3, 3), feature_group_count=2, use_bias=False)(x)))
        x = nn.relu(bn(train)()(nn.Conv(8, (3, 3), use_bias=False)(x)))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class SqueezeExcite(nn.Module):
    """conv-BN-ReLU, then a squeeze-and-excitation gate (sigmoid) multiplied in."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(bn(train)()(nn.Conv(8, (3, 3), use_bias=False)(x)))
        s = jnp.mean(x, axis=(1, 2))
        s = nn.relu(nn.Dense(3, name="se_reduce")(s))
        s = nn.sigmoid(nn.Dense(8, name="se_expand")(s))
        x = x * s[:, None, None, :]
        x = nn.relu(bn(train)()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class BNWithoutReLU(nn.Module):
    """conv -> BN -> tanh: no unit, nothing to prune there; the second conv's BN-ReLU is a unit."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.tanh(bn(train)()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        x = nn.relu(bn(train)()(nn.Conv(7, (3, 3), use_bias=False)(x)))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class MyBatchNorm(nn.Module):
    """A model zoo's own BN: other names, its own statistics collection, divide by sqrt."""

    eps: float = 1e-3

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (c,))
        beta = self.param("beta", nn.initializers.zeros, (c,))
        mean = self.variable("stats", "moving_mean", jnp.zeros, (c,))
        var = self.variable("stats", "moving_var", jnp.ones, (c,))
        return (x - mean.value) / jnp.sqrt(var.value + self.eps) * gamma + beta


class OwnBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(MyBatchNorm()(nn.Conv(6, (3, 3))(x)))
        x = nn.relu(MyBatchNorm()(nn.Conv(7, (3, 3))(x)))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class WithDropout(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(bn(train)()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        x = nn.Dropout(0.3, deterministic=not train)(x)
        x = nn.relu(bn(train)()(nn.Conv(7, (3, 3), use_bias=False)(x)))
        x = nn.Dropout(0.3, deterministic=not train)(x.reshape((x.shape[0], -1)))
        return nn.Dense(5)(x)


class Inception(nn.Module):
    """Two conv-BN-ReLU branches concatenated and read by one conv: each branch prunes on its own."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.relu(bn(train)()(nn.Conv(4, (1, 1), use_bias=False)(x)))
        b = nn.relu(bn(train)()(nn.Conv(5, (3, 3), use_bias=False)(x)))
        x = jnp.concatenate([a, b], axis=-1)
        x = nn.relu(bn(train)()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


ZOO: dict[str, tuple[Callable[[], nn.Module], tuple]] = {
    "chain": (Chain, (2, 6, 6, 3)),
    "resnet_post": (partial(ResNet, (1, 1), ResNetBlock), (2, 8, 8, 3)),
    "resnet_bottleneck": (partial(ResNet, (1, 1), BottleneckResNetBlock), (2, 8, 8, 3)),
    "resnet_pre": (PreActResNet, (2, 6, 6, 3)),
    "densenet": (DenseNet, (2, 6, 6, 3)),
    "depthwise_separable": (DepthwiseSeparable, (2, 6, 6, 3)),
    "inverted_residual": (InvertedResidual, (2, 6, 6, 3)),
    "grouped_conv": (GroupedConv, (2, 6, 6, 3)),
    "squeeze_excite": (SqueezeExcite, (2, 6, 6, 3)),
    "bn_without_relu": (BNWithoutReLU, (2, 6, 6, 3)),
    "own_batchnorm": (OwnBatchNorm, (2, 6, 6, 3)),
    "dropout": (WithDropout, (2, 6, 6, 3)),
    "inception": (Inception, (2, 6, 6, 3)),
}


class ChainNCHW(nn.Module):
    """PyTorch habits: transpose to NCHW before flattening into the head (rows {c * H * W + p})."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(bn(train)()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
        return nn.Dense(5)(x)


ZOO["chain_nchw"] = (ChainNCHW, (2, 6, 6, 3))
