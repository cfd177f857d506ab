"""Pre-activation ResNets for CIFAR: ResNet-56/110 (basic blocks) and ResNet-164 (bottlenecks).

Operation-aware placement (docs/method.md, "Where the masks sit"): every unit is BN -> ReLU -> mask
-> conv, so a mask prunes only the input channels of the conv that follows it (and the BN feeding it).

  basic:      [masked_bn1] -> conv1 -> [masked_bn2] -> conv2            (+ shortcut)
  bottleneck: [masked_bn1] -> conv1 -> [masked_bn2] -> conv2 -> [masked_bn3] -> conv3

The residual stream, the last conv's outputs and the projection shortcut are never pruned. The
first block of each stage shares one unmasked BN-ReLU (``bn1``) between its branch and its shortcut,
so it has no mask1. As in the reference code (``strides > 1 or inp_c != out_filters``) the shortcut
is a 1x1 projection only where the stride is 2 or the width changes: ResNet-56/110's first block
(16 -> 16, stride 1) adds that BN-ReLU's output itself; ResNet-164's (16 -> 64) projects it. Convs
pad symmetrically (``layers.SYMMETRIC``), so a stride-2 3x3 conv and its 1x1 projection read the
same pixel grid. The final BN-ReLU before pooling is masked.

A compact model is the same class with ``block_widths`` (the kept inner widths of each block) and
``block_reads`` (which residual-stream channels each block's masked_bn1 reads, None = all). A block
whose last inner width is 0 has a residual branch that is exactly 0 and is removed (the block is
then the identity, its shared BN-ReLU, or that BN-ReLU and its projection).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.method.units import MaskedBNReLU
from soft_prune_jax.models.layers import classifier, conv

Reads = Optional[tuple[int, ...]]


def full_widths(stage_sizes, stage_widths, bottleneck: bool) -> list[tuple[int, ...]]:
    """Every block's unpruned inner widths: (w,) for basic blocks, (w, w) for bottlenecks."""
    n = 2 if bottleneck else 1
    return [(w,) * n for size, w in zip(stage_sizes, stage_widths) for _ in range(size)]


def select_channels(x, reads: Reads):
    """x[..., reads] with a static index tuple (None = every channel)."""
    if reads is None:
        return x
    return jnp.take(x, jnp.asarray(reads, dtype=jnp.int32), axis=-1)


class PreActBlock(nn.Module):
    """Pre-activation basic (2 convs) or bottleneck (3 convs) block."""

    out_width: int
    inner_widths: tuple[int, ...]  # basic: (conv1 out,), bottleneck: (conv1 out, conv2 out)
    stride: int = 1
    first: bool = False  # first block of a stage: one unmasked BN-ReLU shared with the shortcut
    projection: bool = False  # a 1x1 conv shortcut (first blocks where the stride or width changes)
    reads: Reads = None
    mask: Optional[MaskConfig] = MaskConfig()
    axis_name: Optional[str] = None
    bn_folded: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.projection and not self.first:
            raise ValueError("a projection shortcut needs the shared BN-ReLU of a first block (first=True)")
        if not self.projection and (self.stride != 1 or x.shape[-1] != self.out_width):
            raise ValueError(
                f"an identity shortcut needs stride 1 and {self.out_width} input channels; got stride "
                f"{self.stride} and {x.shape[-1]} channels (set projection=True)"
            )
        if self.first:
            u = MaskedBNReLU(None, axis_name=self.axis_name, name="bn1")(x, train)
            shortcut = conv(u, self.out_width, 1, self.stride, name="proj") if self.projection else u
        else:
            shortcut = x
            if self.inner_widths[-1] == 0:  # removed block: the identity
                return x
            u = MaskedBNReLU(self.mask, axis_name=self.axis_name, name="masked_bn1")(
                select_channels(x, self.reads), train
            )
        if self.inner_widths[-1] == 0:  # the last conv reads nothing: the branch is exactly 0
            return shortcut
        bottleneck = len(self.inner_widths) == 2
        kernels = (1, 3, 1) if bottleneck else (3, 3)
        strides = (1, self.stride, 1) if bottleneck else (self.stride, 1)
        widths = tuple(self.inner_widths) + (self.out_width,)
        h = u
        last = len(widths) - 1
        for j, (width, kernel, stride) in enumerate(zip(widths, kernels, strides)):
            if j > 0:
                if self.bn_folded:  # this BN directly follows conv{j}: folded into it
                    h = nn.relu(h)
                else:
                    h = MaskedBNReLU(self.mask, axis_name=self.axis_name, name=f"masked_bn{j + 1}")(h, train)
            h = conv(h, width, kernel, stride, name=f"conv{j + 1}", use_bias=self.bn_folded and j < last)
        return shortcut + h


class PreActResNet(nn.Module):
    """stem conv -> stages of pre-activation blocks -> masked BN-ReLU -> global pool -> dense."""

    stage_sizes: Sequence[int] = (9, 9, 9)
    stage_widths: Sequence[int] = (16, 32, 64)  # inner width of each stage's blocks
    bottleneck: bool = False  # outputs are 4x the inner width when True
    stem_width: int = 16
    num_classes: int = 10
    block_widths: Optional[tuple[tuple[int, ...], ...]] = None  # per block; None = full
    block_reads: Optional[tuple[Reads, ...]] = None  # per block; None = all channels
    final_reads: Reads = None
    mask: Optional[MaskConfig] = MaskConfig()
    axis_name: Optional[str] = None
    # Inference export: the BNs that directly follow a conv (inside blocks) are folded into it. The
    # BNs that read the residual stream cannot be: a sum precedes them and ReLU follows them.
    bn_folded: bool = False

    def full_block_widths(self) -> list[tuple[int, ...]]:
        return full_widths(self.stage_sizes, self.stage_widths, self.bottleneck)

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner = self.block_widths or self.full_block_widths()
        reads = self.block_reads or (None,) * len(inner)
        if len(inner) != sum(self.stage_sizes) or len(reads) != len(inner):
            raise ValueError(
                f"block_widths/block_reads need {sum(self.stage_sizes)} entries, got {len(inner)}/{len(reads)}"
            )
        x = conv(x, self.stem_width, 3, name="stem")
        b, stream = 0, self.stem_width
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            out_width = width * 4 if self.bottleneck else width
            stride = 2 if s > 0 else 1
            for i in range(size):
                x = PreActBlock(
                    out_width,
                    tuple(inner[b]),
                    stride=(stride if i == 0 else 1),
                    first=(i == 0),
                    projection=(i == 0 and (stride != 1 or stream != out_width)),
                    reads=reads[b],
                    mask=self.mask,
                    axis_name=self.axis_name,
                    bn_folded=self.bn_folded,
                    name=f"block{b}",
                )(x, train)
                b, stream = b + 1, out_width
        x = MaskedBNReLU(self.mask, axis_name=self.axis_name, name="masked_bn_final")(
            select_channels(x, self.final_reads), train
        )
        x = jnp.mean(x, axis=(1, 2))
        return classifier(x, self.num_classes)
