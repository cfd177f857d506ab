"""The eleven built-in architectures as plain Flax modules, written the way Flax's examples/imagenet
writes a ResNet: ``nn.Conv``, ``nn.BatchNorm``, ``nn.relu``, with ``conv`` / ``norm`` module
attributes as swap points (``ops.fast_conv.Conv`` on a CPU, ``nn.BatchNorm(axis_name='batch')`` for
synchronised statistics), and no mask anywhere: the traced path (``user.masked``, ``prune_traced``)
finds the BN-ReLU units from the computation.

Issue 22, step A: these are the built-ins' twins, kept in tests/ while the pipeline still trains
the built-in classes (models/, with ``MaskedBNReLU``), so that the library holds one way per
capability until the swap. Each keeps the paper's placement of BN-ReLU units (which units exist is
the architecture, docs/method.md "Where the masks sit"), the built-in parameter counts, and the
built-in module names, so a built-in model's variables load by path (``builtin_variables``).

``twin(name, num_classes, **kwargs)`` builds one by its built-in name, with the built-in defaults.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from soft_prune_jax.ops import fast_conv, pooling

ModuleDef = Any
POOL = "M"
VGG16_WIDTHS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512)
VGG19_WIDTHS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512)
FMNIST_CNN_WIDTHS = (32, 32, POOL, 64, 64, POOL, 128)
IMAGENET_STEM = 64

he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def symmetric(kernel: int) -> tuple:
    """(k - 1) // 2 before, the rest after, at every stride (PyTorch's padding=k // 2): a stride-2 3x3
    conv then reads the pixel grid of the 1x1 stride-2 projection it is added to."""
    lo = (kernel - 1) // 2
    return ((lo, kernel - 1 - lo),) * 2


def _layers(module, train: bool):
    """(conv, norm) factories of a module: bias-free He-normal convs, BN with the paper's momentum."""
    conv = functools.partial(module.conv, use_bias=False, kernel_init=he_normal)
    norm = functools.partial(module.norm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    return conv, norm


def _conv(conv, width: int, kernel: int, stride: int, name: str):
    return conv(width, (kernel, kernel), strides=(stride, stride), padding=symmetric(kernel), name=name)


def max_pool_2x2(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG(nn.Module):
    """VGG-16/19 and the Fashion-MNIST CNN: Conv -> BN -> ReLU layers, 2x2 max-pools, global mean,
    dense. Every BN-ReLU output feeds only the next conv (or the head): a unit on each layer.
    ``pool``: the 2x2 stride-2 max-pool (``ops.pooling.max_pool_2x2`` on a CPU: a faster gradient)."""

    widths: Sequence[Union[int, str]] = VGG16_WIDTHS
    num_classes: int = 10
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    pool: Callable = max_pool_2x2

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = _layers(self, train)
        i = 0
        for width in self.widths:
            if width == POOL:
                x = self.pool(x)
                continue
            x = nn.relu(norm(name=f"masked_bn{i}")(_conv(conv, width, 3, 1, f"conv{i}")(x)))
            i += 1
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class PreActBlock(nn.Module):
    """Pre-activation basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1) block. The first block of a
    stage has one BN-ReLU (``bn1``) shared by its branch and its shortcut (a 1x1 projection where the
    stride or the width changes, else that BN-ReLU's output itself); other blocks' ``masked_bn1``
    reads the residual stream."""

    out_width: int
    inner_width: int
    bottleneck: bool
    conv: ModuleDef
    norm: ModuleDef
    stride: int = 1
    first: bool = False
    projection: bool = False

    @nn.compact
    def __call__(self, x):
        u = nn.relu(self.norm(name="bn1" if self.first else "masked_bn1")(x))
        shortcut = x
        if self.first:
            shortcut = _conv(self.conv, self.out_width, 1, self.stride, "proj")(u) if self.projection else u
        if self.bottleneck:
            kernels, strides = (1, 3, 1), (1, self.stride, 1)
            widths = (self.inner_width, self.inner_width, self.out_width)
        else:
            kernels, strides, widths = (3, 3), (self.stride, 1), (self.inner_width, self.out_width)
        h = u
        for j, (width, kernel, stride) in enumerate(zip(widths, kernels, strides)):
            if j > 0:
                h = nn.relu(self.norm(name=f"masked_bn{j + 1}")(h))
            h = _conv(self.conv, width, kernel, stride, f"conv{j + 1}")(h)
        return shortcut + h


class PreActResNet(nn.Module):
    """CIFAR pre-activation ResNet-56/110 (basic) and ResNet-164 (bottleneck, outputs 4x the inner
    width): stem conv -> stages of blocks -> BN-ReLU -> global mean -> dense."""

    stage_sizes: Sequence[int] = (9, 9, 9)
    stage_widths: Sequence[int] = (16, 32, 64)
    bottleneck: bool = False
    stem_width: int = 16
    num_classes: int = 10
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = _layers(self, train)
        x = _conv(conv, self.stem_width, 3, 1, "stem")(x)
        b, stream = 0, self.stem_width
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            out_width = 4 * width if self.bottleneck else width
            for i in range(size):
                stride = 2 if s > 0 and i == 0 else 1
                projection = i == 0 and (stride != 1 or stream != out_width)
                block = PreActBlock(
                    out_width, width, self.bottleneck, conv, norm, stride, i == 0, projection, name=f"block{b}"
                )
                x = block(x)
                b, stream = b + 1, out_width
        x = nn.relu(norm(name="masked_bn_final")(x))
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class DenseNet(nn.Module):
    """DenseNet-40 (k = 12, no compression): BN -> ReLU -> 3x3 conv on the concatenation of all
    earlier features; transitions BN -> ReLU -> 1x1 conv -> 2x2 average pool; a final BN-ReLU."""

    layers_per_block: int = 12
    num_blocks: int = 3
    growth_rate: int = 12
    stem_width: int = 24
    num_classes: int = 10
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = _layers(self, train)
        x = _conv(conv, self.stem_width, 3, 1, "stem")(x)
        unit = 0
        for b in range(self.num_blocks):
            for _ in range(self.layers_per_block):
                h = nn.relu(norm(name=f"masked_bn{unit}")(x))
                x = jnp.concatenate([x, _conv(conv, self.growth_rate, 3, 1, f"conv{unit}")(h)], axis=-1)
                unit += 1
            if b < self.num_blocks - 1:
                h = nn.relu(norm(name=f"masked_bn{unit}")(x))
                x = nn.avg_pool(_conv(conv, x.shape[-1], 1, 1, f"conv{unit}")(h), (2, 2), strides=(2, 2))
                unit += 1
        x = nn.relu(norm(name=f"masked_bn{unit}")(x))
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class ResNetBlock(nn.Module):
    """Post-activation ImageNet block (v1.5: the stride on the 3x3 conv of a bottleneck): BN-ReLU
    after every inner conv; the last conv's BN and the projection's BN have no ReLU of their own."""

    out_width: int
    inner_width: int
    bottleneck: bool
    conv: ModuleDef
    norm: ModuleDef
    stride: int = 1
    projection: bool = False

    @nn.compact
    def __call__(self, x):
        if self.bottleneck:
            kernels, strides = (1, 3, 1), (1, self.stride, 1)
            widths = (self.inner_width, self.inner_width, self.out_width)
        else:
            kernels, strides, widths = (3, 3), (self.stride, 1), (self.inner_width, self.out_width)
        h = x
        for j, (width, kernel, stride) in enumerate(zip(widths, kernels, strides)):
            h = _conv(self.conv, width, kernel, stride, f"conv{j + 1}")(h)
            if j < len(widths) - 1:
                h = nn.relu(self.norm(name=f"masked_bn{j + 1}")(h))
        h = self.norm(name=f"bn{len(widths)}")(h)
        shortcut = x
        if self.projection:
            shortcut = self.norm(name="proj_bn")(_conv(self.conv, self.out_width, 1, self.stride, "proj")(x))
        return nn.relu(shortcut + h)


class ResNet(nn.Module):
    """ResNet-18/34/50/101 for ImageNet: 7x7 stride-2 stem, BN-ReLU, 3x3 stride-2 max-pool, stages
    of post-activation blocks, global mean, dense. The stem's BN-ReLU is a unit exactly where the
    first block projects it (ResNet-50/101); in ResNet-18/34 it is stage 1's residual stream."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    bottleneck: bool = True
    num_classes: int = 1000
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm

    @property
    def stem_masked(self) -> bool:
        return self.stage_widths[0] * (4 if self.bottleneck else 1) != IMAGENET_STEM

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = _layers(self, train)
        x = conv(IMAGENET_STEM, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), name="stem")(x)
        x = nn.relu(norm(name="masked_bn_stem" if self.stem_masked else "bn_stem")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # inputs >= 0: -inf pads never win
        b, stream = 0, IMAGENET_STEM
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            out_width = 4 * width if self.bottleneck else width
            for i in range(size):
                stride = 2 if s > 0 and i == 0 else 1
                projection = i == 0 and (stride != 1 or stream != out_width)
                x = ResNetBlock(out_width, width, self.bottleneck, conv, norm, stride, projection, name=f"block{b}")(x)
                b, stream = b + 1, out_width
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


_TWINS: dict[str, tuple[type, dict]] = {
    "fmnist_cnn": (VGG, dict(widths=FMNIST_CNN_WIDTHS)),
    "vgg16": (VGG, dict(widths=VGG16_WIDTHS)),
    "vgg19": (VGG, dict(widths=VGG19_WIDTHS)),
    "resnet56": (PreActResNet, dict(stage_sizes=(9, 9, 9))),
    "resnet110": (PreActResNet, dict(stage_sizes=(18, 18, 18))),
    "resnet164": (PreActResNet, dict(stage_sizes=(18, 18, 18), bottleneck=True)),
    "densenet40": (DenseNet, dict(layers_per_block=12, growth_rate=12)),
    "resnet18": (ResNet, dict(stage_sizes=(2, 2, 2, 2), bottleneck=False)),
    "resnet34": (ResNet, dict(stage_sizes=(3, 4, 6, 3), bottleneck=False)),
    "resnet50": (ResNet, dict(stage_sizes=(3, 4, 6, 3), bottleneck=True)),
    "resnet101": (ResNet, dict(stage_sizes=(3, 4, 23, 3), bottleneck=True)),
}
NAMES = tuple(sorted(_TWINS))


def twin(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The plain module of built-in ``name``; ``kwargs`` override its defaults (tiny widths, ``conv``)."""
    if name not in _TWINS:
        raise ValueError(f"unknown built-in {name!r}; known: {', '.join(NAMES)}")
    cls, defaults = _TWINS[name]
    return cls(num_classes=num_classes, **{**defaults, **kwargs})


def cpu_twin(name: str, num_classes: int, **kwargs) -> nn.Module:
    """``twin`` with the CPU choices of the built-ins: ``fast_conv.Conv`` and (VGG) ``max_pool_2x2``."""
    choices = {"conv": fast_conv.Conv}
    if _TWINS[name][0] is VGG:
        choices["pool"] = pooling.max_pool_2x2
    return twin(name, num_classes, **{**choices, **kwargs})


def builtin_variables(variables) -> dict:
    """A built-in model's variables at the twin's paths: the ImageNet ResNet's unmasked BNs nest their
    arrays one level deeper (``bn3/bn/scale``); every other path is the same."""
    flat = traverse_util.flatten_dict(dict(variables))
    return traverse_util.unflatten_dict({tuple(k for k in key if k != "bn"): v for key, v in flat.items()})
