"""Pre-activation ResNet-56/110 (basic blocks) and ResNet-164 (bottlenecks) for CIFAR.

A block is [BN1-ReLU] -> conv1 -> [BN2-ReLU] -> conv2 (-> [BN3-ReLU] -> conv3), added to the
shortcut. SCP masks every BN-ReLU that only feeds a conv of the branch (docs/method.md, "Where the
masks sit"); the residual stream stays whole. The first block of a stage has one BN-ReLU (``bn1``)
shared by its branch and its shortcut (a 1x1 projection where the stride or the width changes,
else that BN-ReLU's output itself). The paper has no mask there, so ``PreActResNet.keep_whole``
names it: the traced path leaves its group whole (``traced.masked.UnitSet``).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.models.common import ModuleDef, conv_layer, layers


class PreActBlock(nn.Module):
    """Pre-activation basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1) block."""

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
            shortcut = conv_layer(self.conv, self.out_width, 1, self.stride, "proj")(u) if self.projection else u
        if self.bottleneck:
            kernels, strides = (1, 3, 1), (1, self.stride, 1)
            widths = (self.inner_width, self.inner_width, self.out_width)
        else:
            kernels, strides, widths = (3, 3), (self.stride, 1), (self.inner_width, self.out_width)
        h = u
        for j, (width, kernel, stride) in enumerate(zip(widths, kernels, strides)):
            if j > 0:
                h = nn.relu(self.norm(name=f"masked_bn{j + 1}")(h))
            h = conv_layer(self.conv, width, kernel, stride, f"conv{j + 1}")(h)
        return shortcut + h


class PreActResNet(nn.Module):
    """Stem conv -> stages of pre-activation blocks -> BN-ReLU -> global mean -> dense. Bottleneck
    blocks output 4x their inner width."""

    stage_sizes: Sequence[int] = (9, 9, 9)
    stage_widths: Sequence[int] = (16, 32, 64)
    bottleneck: bool = False
    stem_width: int = 16
    num_classes: int = 10
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm

    # Unit names (fnmatch patterns) whose groups SCP leaves whole: the shared BN-ReLU of a first block.
    keep_whole: ClassVar[tuple] = ("block*/bn1",)

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = layers(self, train)
        x = conv_layer(conv, self.stem_width, 3, 1, "stem")(x)
        b, stream = 0, self.stem_width
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            out_width = 4 * width if self.bottleneck else width
            for i in range(size):
                stride = 2 if s > 0 and i == 0 else 1
                projection = i == 0 and (stride != 1 or stream != out_width)
                x = PreActBlock(
                    out_width, width, self.bottleneck, conv, norm, stride, i == 0, projection, name=f"block{b}"
                )(x)
                b, stream = b + 1, out_width
        x = nn.relu(norm(name="masked_bn_final")(x))
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))
