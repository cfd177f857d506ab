"""DenseNet-40 (k = 12, no compression) for CIFAR.

Each layer is BN -> ReLU -> 3x3 conv (k channels) on the concatenation of everything before it, so
SCP's mask on a layer's BN-ReLU prunes only that consumer's view of the features: a feature can be
kept for one consumer and dropped for another (docs/method.md, "Where the masks sit"). Transitions
are BN -> ReLU -> 1x1 conv -> 2x2 average pool; a final BN-ReLU feeds global pooling and the head.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from soft_prune_jax.models.common import ModuleDef, conv_layer, layers


class DenseNet(nn.Module):
    layers_per_block: int = 12
    num_blocks: int = 3
    growth_rate: int = 12
    stem_width: int = 24
    num_classes: int = 10
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = layers(self, train)
        x = conv_layer(conv, self.stem_width, 3, 1, "stem")(x)
        unit = 0
        for b in range(self.num_blocks):
            for _ in range(self.layers_per_block):
                h = nn.relu(norm(name=f"masked_bn{unit}")(x))
                x = jnp.concatenate([x, conv_layer(conv, self.growth_rate, 3, 1, f"conv{unit}")(h)], axis=-1)
                unit += 1
            if b < self.num_blocks - 1:
                h = nn.relu(norm(name=f"masked_bn{unit}")(x))
                x = nn.avg_pool(conv_layer(conv, x.shape[-1], 1, 1, f"conv{unit}")(h), (2, 2), strides=(2, 2))
                unit += 1
        x = nn.relu(norm(name=f"masked_bn{unit}")(x))
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))
