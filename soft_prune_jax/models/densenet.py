"""DenseNet-40 (k = 12) for CIFAR with a mask on every BN-ReLU (docs/method.md, "Where the masks sit").

Each layer is BN -> ReLU -> mask -> 3x3 conv (k channels) on the concatenation of everything before
it, so a mask prunes only that consumer's view of the features: a feature can be kept for one
consumer and dropped for another. Transitions are BN -> ReLU -> mask -> 1x1 conv (no compression)
-> 2x2 average pool; the final BN -> ReLU -> mask feeds global pooling and the classifier.

A compact model is the same class with ``reads``: for every masked unit, in order (the layers of
block 0, transition 0, ..., the final unit), the tuple of input channels it keeps (None = all).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.method.units import MaskedBNReLU
from soft_prune_jax.models.layers import classifier, conv
from soft_prune_jax.models.resnet_cifar import Reads, select_channels


class DenseNet(nn.Module):
    """DenseNet-BC-free (plain) DenseNet; DenseNet-40 is depth 40, growth 12."""

    layers_per_block: int = 12
    num_blocks: int = 3
    growth_rate: int = 12
    stem_width: int = 24
    num_classes: int = 10
    reads: Optional[tuple[Reads, ...]] = None
    mask: Optional[MaskConfig] = MaskConfig()
    axis_name: Optional[str] = None

    @property
    def num_units(self) -> int:
        return self.num_blocks * self.layers_per_block + (self.num_blocks - 1) + 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        reads = self.reads or (None,) * self.num_units
        if len(reads) != self.num_units:
            raise ValueError(f"reads needs {self.num_units} entries (one per masked unit), got {len(reads)}")
        unit = 0
        x = conv(x, self.stem_width, 3, name="stem")
        for b in range(self.num_blocks):
            for _ in range(self.layers_per_block):
                h = MaskedBNReLU(self.mask, axis_name=self.axis_name, name=f"masked_bn{unit}")(
                    select_channels(x, reads[unit]), train
                )
                h = conv(h, self.growth_rate, 3, name=f"conv{unit}")
                x = jnp.concatenate([x, h], axis=-1)
                unit += 1
            if b < self.num_blocks - 1:
                h = MaskedBNReLU(self.mask, axis_name=self.axis_name, name=f"masked_bn{unit}")(
                    select_channels(x, reads[unit]), train
                )
                x = conv(h, x.shape[-1], 1, name=f"conv{unit}")
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
                unit += 1
        x = MaskedBNReLU(self.mask, axis_name=self.axis_name, name=f"masked_bn{unit}")(
            select_channels(x, reads[unit]), train
        )
        x = jnp.mean(x, axis=(1, 2))
        return classifier(x, self.num_classes)
