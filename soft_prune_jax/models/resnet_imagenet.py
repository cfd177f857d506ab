"""ResNet-18/34/50/101 for ImageNet (v1.5: the stride sits on the 3x3 conv of a bottleneck).

Post-activation blocks. Masks (our decision, METHOD.md section 3) sit on the block-internal
BN -> ReLU outputs: after conv1 in a basic block, after conv1 and conv2 in a bottleneck. Each mask
removes the output channels of the conv before it, its BN, and the input channels of the conv
after it. The residual stream (stem, each block's last conv and BN, projections) stays whole.

A compact model is the same class with ``block_widths``: the kept inner widths of every block.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.models.layers import classifier, conv

from soft_prune_jax.method.units import BatchNorm, MaskedBNReLU
from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.models.resnet_cifar import full_widths


class ResNetBlock(nn.Module):
    out_width: int
    inner_widths: Tuple[int, ...]  # basic: (conv1 out,), bottleneck: (conv1 out, conv2 out)
    stride: int = 1
    mask: Optional[MaskConfig] = MaskConfig()
    axis_name: Optional[str] = None
    bn_folded: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        folded = self.bn_folded
        bottleneck = len(self.inner_widths) == 2
        kernels = (1, 3, 1) if bottleneck else (3, 3)
        strides = (1, self.stride, 1) if bottleneck else (self.stride, 1)
        widths = tuple(self.inner_widths) + (self.out_width,)
        h = x
        for j, (width, kernel, stride) in enumerate(zip(widths, kernels, strides)):
            h = conv(h, width, kernel, stride, name=f"conv{j + 1}", use_bias=folded)
            if j < len(widths) - 1:
                h = nn.relu(h) if folded else MaskedBNReLU(self.mask, axis_name=self.axis_name,
                                                           name=f"masked_bn{j + 1}")(h, train)
        if not folded:
            h = BatchNorm(axis_name=self.axis_name, name=f"bn{len(widths)}")(h, train)
        shortcut = x
        if x.shape[-1] != self.out_width or self.stride != 1:
            shortcut = conv(x, self.out_width, 1, self.stride, name="proj", use_bias=folded)
            if not folded:
                shortcut = BatchNorm(axis_name=self.axis_name, name="proj_bn")(shortcut, train)
        return nn.relu(shortcut + h)


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    bottleneck: bool = True
    num_classes: int = 1000
    block_widths: Optional[Tuple[Tuple[int, ...], ...]] = None
    mask: Optional[MaskConfig] = MaskConfig()
    axis_name: Optional[str] = None
    bn_folded: bool = False  # inference export: every BN folded into the conv before it

    def full_block_widths(self) -> list[Tuple[int, ...]]:
        return full_widths(self.stage_sizes, self.stage_widths, self.bottleneck)

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner = self.block_widths or self.full_block_widths()
        if len(inner) != sum(self.stage_sizes):
            raise ValueError(f"block_widths needs {sum(self.stage_sizes)} entries, got {len(inner)}")
        x = conv(x, 64, 7, 2, name="stem", use_bias=self.bn_folded)
        x = nn.relu(x) if self.bn_folded else MaskedBNReLU(None, axis_name=self.axis_name, name="bn_stem")(x, train)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        b = 0
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            out_width = width * 4 if self.bottleneck else width
            for i in range(size):
                x = ResNetBlock(out_width, tuple(inner[b]), stride=(2 if s > 0 and i == 0 else 1), mask=self.mask,
                                axis_name=self.axis_name, bn_folded=self.bn_folded, name=f"block{b}")(x, train)
                b += 1
        x = jnp.mean(x, axis=(1, 2))
        return classifier(x, self.num_classes)
