"""VGG-16/19 for CIFAR and the small Fashion-MNIST CNN: plain post-activation chains.

Every conv is Conv -> BN -> ReLU, and every BN-ReLU output feeds only the next conv (or the head), so
SCP puts a mask on each (docs/method.md, "Where the masks sit"); nothing here names a mask: the
traced path finds the units from the computation.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.models.common import ModuleDef, conv_layer, layers, max_pool_2x2

POOL = "M"
VGG16_WIDTHS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512)
VGG19_WIDTHS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512)
FMNIST_CNN_WIDTHS = (32, 32, POOL, 64, 64, POOL, 128)  # small and fast on 2 CPU cores


class VGG(nn.Module):
    """3x3 Conv -> BN -> ReLU layers and 2x2 max-pools (``widths``: an int per conv, "M" per pool),
    global mean, one dense layer. ``pool``: the 2x2 stride-2 max-pool (``ops.pooling.max_pool_2x2``
    on a CPU: a faster gradient)."""

    widths: Sequence[Union[int, str]] = VGG16_WIDTHS
    num_classes: int = 10
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    pool: Callable = max_pool_2x2

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = layers(self, train)
        i = 0
        for width in self.widths:
            if width == POOL:
                x = self.pool(x)
                continue
            x = nn.relu(norm(name=f"masked_bn{i}")(conv_layer(conv, width, 3, 1, f"conv{i}")(x)))
            i += 1
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))
