"""ResNet-18/34/50/101 for ImageNet (v1.5: the stride sits on the 3x3 conv of a bottleneck).

Post-activation blocks; no reference code exists for SCP on ImageNet, so the placement is our
decision (docs/method.md, "Where the masks sit"):
- masks on the block-internal BN -> ReLU outputs: after conv1 in a basic block, after conv1 and
  conv2 in a bottleneck. Each removes the output channels of the conv before it, its BN, and the
  input channels of the conv after it;
- the stem's Conv -> BN -> ReLU carries a mask (``masked_bn_stem``) exactly where its output feeds
  only the first block's conv1 and projection, as in ResNet-50/101 (64 -> 256): it is then a plain
  chain unit, and like VGG's it never loses its last channel. In ResNet-18/34 the first block's
  shortcut is the identity, so the stem's output is stage 1's residual stream and stays whole
  (``bn_stem``, unmasked);
- the residual stream (each block's last conv and BN, projections) stays whole.
Convs and the stem's max-pool pad symmetrically (torchvision's padding: 3 for the 7x7 stem, 1 for
3x3 convs and the pool), so stride-2 windows line up with the 1x1 stride-2 projections.

A compact model is the same class with ``block_widths`` (the kept inner widths of every block)
and ``stem_width`` (the kept stem channels).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.method.units import BatchNorm, MaskedBNReLU
from soft_prune_jax.models.layers import classifier, conv
from soft_prune_jax.models.resnet_cifar import full_widths

STEM_WIDTH = 64


def stem_is_masked(stage_widths: Sequence[int], bottleneck: bool) -> bool:
    """True where the first block projects the stem's output (its width changes), so the stem's
    output feeds only that block's conv1 and projection and can lose channels."""
    return stage_widths[0] * (4 if bottleneck else 1) != STEM_WIDTH


class ResNetBlock(nn.Module):
    out_width: int
    inner_widths: tuple[int, ...]  # basic: (conv1 out,), bottleneck: (conv1 out, conv2 out)
    stride: int = 1
    projection: bool = False  # a 1x1 conv + BN shortcut (where the stride or the width changes)
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
                h = (
                    nn.relu(h)
                    if folded
                    else MaskedBNReLU(self.mask, axis_name=self.axis_name, name=f"masked_bn{j + 1}")(h, train)
                )
        if not folded:
            h = BatchNorm(axis_name=self.axis_name, name=f"bn{len(widths)}")(h, train)
        shortcut = x
        if not self.projection and (self.stride != 1 or x.shape[-1] != self.out_width):
            raise ValueError(
                f"an identity shortcut needs stride 1 and {self.out_width} input channels; got stride "
                f"{self.stride} and {x.shape[-1]} channels (set projection=True)"
            )
        if self.projection:
            shortcut = conv(x, self.out_width, 1, self.stride, name="proj", use_bias=folded)
            if not folded:
                shortcut = BatchNorm(axis_name=self.axis_name, name="proj_bn")(shortcut, train)
        return nn.relu(shortcut + h)


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    bottleneck: bool = True
    num_classes: int = 1000
    block_widths: Optional[tuple[tuple[int, ...], ...]] = None
    stem_width: Optional[int] = None  # kept stem channels of a compact model; None = STEM_WIDTH
    mask: Optional[MaskConfig] = MaskConfig()
    axis_name: Optional[str] = None
    bn_folded: bool = False  # inference export: every BN folded into the conv before it

    def full_block_widths(self) -> list[tuple[int, ...]]:
        return full_widths(self.stage_sizes, self.stage_widths, self.bottleneck)

    @property
    def stem_masked(self) -> bool:
        return stem_is_masked(self.stage_widths, self.bottleneck)

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner = self.block_widths or self.full_block_widths()
        if len(inner) != sum(self.stage_sizes):
            raise ValueError(f"block_widths needs {sum(self.stage_sizes)} entries, got {len(inner)}")
        stem_width = STEM_WIDTH if self.stem_width is None else self.stem_width
        if self.stem_width is not None and not self.stem_masked and stem_width != STEM_WIDTH:
            raise ValueError(
                f"stem_width={self.stem_width} is invalid: this ResNet's stem output is the residual "
                f"stream (identity shortcut), so it keeps all {STEM_WIDTH} channels"
            )
        x = conv(x, stem_width, 7, 2, name="stem", use_bias=self.bn_folded)
        if self.bn_folded:
            x = nn.relu(x)
        elif self.stem_masked:  # feeds only block0's conv1 and projection: a chain unit
            x = MaskedBNReLU(self.mask, keep_at_least_one=True, axis_name=self.axis_name, name="masked_bn_stem")(
                x, train
            )
        else:
            x = MaskedBNReLU(None, axis_name=self.axis_name, name="bn_stem")(x, train)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # inputs >= 0: -inf pads never win
        b, stream = 0, STEM_WIDTH
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            out_width = width * 4 if self.bottleneck else width
            stride = 2 if s > 0 else 1
            for i in range(size):
                x = ResNetBlock(
                    out_width,
                    tuple(inner[b]),
                    stride=(stride if i == 0 else 1),
                    projection=(i == 0 and (stride != 1 or stream != out_width)),
                    mask=self.mask,
                    axis_name=self.axis_name,
                    bn_folded=self.bn_folded,
                    name=f"block{b}",
                )(x, train)
                b, stream = b + 1, out_width
        x = jnp.mean(x, axis=(1, 2))
        return classifier(x, self.num_classes)
