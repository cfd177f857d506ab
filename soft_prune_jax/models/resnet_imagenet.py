"""ResNet-18/34/50/101 for ImageNet (v1.5: the stride sits on the 3x3 conv of a bottleneck).

Post-activation blocks. No reference code exists for SCP on ImageNet, so the placement is this
project's (docs/method.md, "Where the masks sit"), and it is what the traced path finds: the
block-internal BN-ReLUs are units; the residual stream (each block's last conv and BN,
projections) stays whole; the stem's BN-ReLU is a unit exactly where its output feeds only the
first block's conv1 and projection (ResNet-50/101: 64 -> 256), while in ResNet-18/34 it is stage
1's residual stream. Convs and the stem's max-pool pad symmetrically (torchvision's padding), so
stride-2 windows line up with the 1x1 stride-2 projections.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.models.common import ModuleDef, conv_layer, layers

IMAGENET_STEM = 64


class ResNetBlock(nn.Module):
    """BN-ReLU after every inner conv; the last conv's BN and the projection's BN have no ReLU of their own."""

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
            h = conv_layer(self.conv, width, kernel, stride, f"conv{j + 1}")(h)
            if j < len(widths) - 1:
                h = nn.relu(self.norm(name=f"masked_bn{j + 1}")(h))
        h = self.norm(name=f"bn{len(widths)}")(h)
        shortcut = x
        if self.projection:
            shortcut = self.norm(name="proj_bn")(conv_layer(self.conv, self.out_width, 1, self.stride, "proj")(x))
        return nn.relu(shortcut + h)


class ResNet(nn.Module):
    """7x7 stride-2 stem, BN-ReLU, 3x3 stride-2 max-pool, stages of blocks, global mean, dense."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    bottleneck: bool = True
    num_classes: int = 1000
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm

    @property
    def stem_masked(self) -> bool:
        """Whether the stem's BN-ReLU is a unit (its output is not stage 1's residual stream)."""
        return self.stage_widths[0] * (4 if self.bottleneck else 1) != IMAGENET_STEM

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = layers(self, train)
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
