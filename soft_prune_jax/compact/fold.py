"""Inference export with BatchNorm folded into the convolution before it.

For a conv followed directly by BN (evaluation mode, running statistics):
    BN(conv(x, W)) = conv(x, W * s) + (beta - mean * s),   s = gamma / sqrt(var + eps)
which is exact up to float rounding. Where it applies (``structure.Structure.folds``):
- post-activation chains (VGG, the Fashion-MNIST CNN) and ImageNet ResNets: every BN;
- pre-activation ResNets: the BNs inside a residual branch (they follow conv1 / conv2 directly);
  the BNs that read the residual stream cannot be folded: a sum precedes them, a ReLU follows
  them, and the conv after the ReLU cannot absorb an affine map applied before it;
- DenseNet: nothing: every BN reads a concatenation shared by several consumers, each with its own
  BN, and is followed by a ReLU; the model is returned unchanged.
Fold a model without masks (a compact model from ``surgery.prune``, or a dense one): a mask's hard
decision depends on the BN parameters that folding removes.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from soft_prune_jax.compact.structure import describe
from soft_prune_jax.compact.surgery import fit_variables

BN_EPSILON = 1e-5  # MaskedBNReLU and BatchNorm both use flax's default


def fold_batchnorm(model: nn.Module, variables):
    """Returns (folded_model, folded_variables): the same class with ``bn_folded=True``."""
    if getattr(model, "mask", None) is not None:
        raise ValueError(
            f"fold_batchnorm needs a model without masks (mask=None, e.g. the output of "
            f"surgery.prune); got mask={model.mask}"
        )
    structure = describe(model)
    if not structure.folds:
        return model, variables
    if getattr(model, "bn_folded", False):
        raise ValueError("this model's BatchNorms are already folded")
    flat = traverse_util.flatten_dict(unfreeze(dict(variables)))
    for fold in structure.folds:
        scale_key = ("params",) + fold.bn + ("scale",)
        if scale_key not in flat:  # part of a removed block
            continue
        gamma = np.asarray(flat.pop(scale_key), np.float64)
        beta = np.asarray(flat.pop(("params",) + fold.bn + ("bias",)), np.float64)
        mean = np.asarray(flat.pop(("batch_stats",) + fold.bn + ("mean",)), np.float64)
        var = np.asarray(flat.pop(("batch_stats",) + fold.bn + ("var",)), np.float64)
        s = gamma / np.sqrt(var + BN_EPSILON)
        kernel_key = ("params",) + fold.conv + ("kernel",)
        if kernel_key in flat:
            flat[kernel_key] = jnp.asarray(np.asarray(flat[kernel_key], np.float64) * s, jnp.float32)
        flat[("params",) + fold.conv + ("bias",)] = jnp.asarray(beta - mean * s, jnp.float32)
    folded = model.clone(bn_folded=True)
    return folded, fit_variables(folded, flat, structure.input_kernel)
