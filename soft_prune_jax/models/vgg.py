"""Plain post-activation chains: VGG-16/19 for CIFAR and the small Fashion-MNIST CNN.

Every conv is Conv -> BN -> ReLU -> mask (docs/method.md, "Where the masks sit"). The mask removes
the conv's output channels, its BN channels and the next layer's input channels. A layer never
loses its last channel (``keep_at_least_one``: the lowest z = (eps - beta) / |gamma| stays),
because an empty layer would make the network constant.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.method.units import MaskedBNReLU
from soft_prune_jax.models.layers import classifier, conv
from soft_prune_jax.ops.pooling import max_pool_2x2

POOL = "M"
VGG16_WIDTHS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512)
VGG19_WIDTHS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512)
# Small and fast on 2 CPU cores: ~22M MACs per 28x28x1 image.
FMNIST_CNN_WIDTHS = (32, 32, POOL, 64, 64, POOL, 128)


class VGG(nn.Module):
    """A chain of 3x3 Conv -> BN -> ReLU -> mask layers, 2x2 max-pools, global pooling, one dense.

    widths: one entry per layer: an int (conv output channels) or "M" (2x2 max-pool).
    """

    widths: Sequence[Union[int, str]] = VGG16_WIDTHS
    num_classes: int = 10
    mask: Optional[MaskConfig] = MaskConfig()
    axis_name: Optional[str] = None
    bn_folded: bool = False  # inference export: each BN folded into its conv (see fold.py)

    @nn.compact
    def __call__(self, x, train: bool = False):
        i = 0
        for width in self.widths:
            if width == POOL:
                x = max_pool_2x2(x)  # = nn.max_pool(x, (2, 2), strides=(2, 2)), with a fast gradient on CPU
                continue
            x = conv(x, width, 3, name=f"conv{i}", use_bias=self.bn_folded)
            if self.bn_folded:
                x = nn.relu(x)
            else:
                x = MaskedBNReLU(self.mask, keep_at_least_one=True, axis_name=self.axis_name, name=f"masked_bn{i}")(
                    x, train
                )
            i += 1
        x = jnp.mean(x, axis=(1, 2))
        return classifier(x, self.num_classes)

    @property
    def conv_widths(self) -> list[int]:
        return [w for w in self.widths if w != POOL]
