"""Random pruning without training, for the scripts that time or count compact models.

A model is cut exactly as the pipeline's prune phase cuts a trained one (``pipeline.model_path.cut``: the
units' SCP hard masks, the model's ``keep_whole``, ``config.round_to``); only the variables are random:
kernels He-normal, and in every unit (``traced.masked.UnitSet``) a random fraction of channels dead (BN
bias -10, so the unit's output is zero there for any input). launch/benchmark.py --random_prune does
the same from initialised weights.

    config = random_cut.config_for("resnet56", round_to=8)
    variables = random_cut.random_variables(config, (32, 32, 3), seed=0, fraction=0.5)
    compact, compact_vars = random_cut.cut(config, variables, (32, 32, 3))
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the ``configs`` package

from configs import default  # noqa: E402
from soft_prune_jax.pipeline import model_path as traced  # noqa: E402


def config_for(model: str, num_classes: int = 10, round_to=1, **model_kwargs):
    """configs/default.py's config (SCP, the paper's mask settings) for ``model`` without a dataset."""
    config = default.get_config()
    config.model, config.num_classes, config.round_to = model, num_classes, round_to
    config.model_kwargs = model_kwargs
    return config


def random_variables(config, input_shape: Sequence[int], seed: int = 0, fraction: float = 0.5) -> dict:
    """Variables of ``config.model`` drawn in NumPy from its shapes alone (no compile of its init):
    kernels He-normal (fan-in), other params zero, BN as described in the module docstring."""
    user, units = traced.setup(config, input_shape)
    x = jax.ShapeDtypeStruct((traced.SAMPLE_BATCH,) + tuple(input_shape), jnp.float32)
    shapes = jax.eval_shape(user.init, jax.random.PRNGKey(seed), x)
    unit_biases = {tuple(p) for u in units.units for p in u.params_leaves if p[-1] == "bias"}
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(dict(shapes))
    for key, leaf in sorted(flat.items()):
        flat[key] = _draw(rng, key, tuple(leaf.shape), key in unit_biases, fraction).astype(np.float32)
    return jax.tree_util.tree_map(jnp.asarray, traverse_util.unflatten_dict(flat))


def _draw(rng, key: tuple, shape: tuple, unit_bias: bool, fraction: float) -> np.ndarray:
    if key[-1] == "kernel":
        fan_in = int(np.prod(shape[:-1])) or 1
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if len(shape) != 1 or key[-1] not in ("scale", "bias", "mean", "var"):
        return np.zeros(shape)
    if key[-1] == "scale":
        return rng.uniform(0.5, 1.5, shape)
    if unit_bias:
        return np.where(rng.random(shape) < fraction, -10.0, rng.uniform(0.1, 1.0, shape))
    if key[-1] == "var":
        return rng.uniform(0.5, 2.0, shape)
    return rng.normal(0.0, 0.3, shape)


def cut(config, variables, input_shape: Sequence[int]):
    """(compact, compact_variables): the prune phase's own cut of ``variables``."""
    return traced.cut(config, variables, input_shape)


def dense_apply(config, input_shape: Sequence[int]):
    """``apply(variables, x)`` of the model as written (what a cut is measured against)."""
    model = traced.dense_model(config, input_shape)
    return lambda v, x: model.apply(v, x, train=False)
