"""Helpers shared by the test_graph_* files: random BN parameters with dead channels, cached zoo models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import zoo_linen
import zoo_nnx
from flax import nnx, traverse_util

from conftest import normal

_BN_SCALE = ("scale", "gamma")
_BN_BIAS = ("bias", "beta")


def _is_bn_module(keys, prefix) -> bool:
    return any(k[:-1] == prefix and k[-1] in _BN_SCALE for k in keys)


def _from_shapes(flat: dict, seed: int) -> dict:
    """He-normal kernels (and zeros elsewhere) drawn in NumPy from abstract leaves: no eager init."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, leaf in flat.items():
        shape, dtype = tuple(leaf.shape), leaf.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            out[k] = jax.random.key(0) if shape == () else jax.random.split(jax.random.key(0), shape)
        elif len(shape) >= 2:
            out[k] = rng.normal(0.0, np.sqrt(2.0 / max(1, int(np.prod(shape[:-1])))), shape).astype(np.float32)
        else:
            out[k] = np.zeros(shape, dtype)
    return out


def randomize(flat: dict, seed: int, fraction: float) -> dict:
    """{path: array} with random BN statistics; a random ``fraction`` of every BN's channels get
    bias -10 (dead after a ReLU, pruned by SCP's hard mask), the rest a positive bias (kept)."""
    rng = np.random.default_rng(seed)
    keys = list(flat)
    out = {}
    for k, v in flat.items():
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            out[k] = v
            continue
        v = np.asarray(v)
        if v.ndim != 1 or not np.issubdtype(v.dtype, np.floating):
            out[k] = v
            continue
        n, leaf = v.shape[0], k[-1]
        if leaf in _BN_SCALE:
            v = rng.uniform(0.5, 1.5, n)
        elif leaf in _BN_BIAS and _is_bn_module(keys, k[:-1]):
            v = np.where(rng.random(n) < fraction, -10.0, rng.uniform(0.1, 1.0, n))
        elif "mean" in leaf:
            v = rng.normal(0.0, 0.3, n)
        elif "var" in leaf:
            v = rng.uniform(0.5, 2.0, n)
        else:
            v = rng.normal(0.0, 0.1, n)
        out[k] = v.astype(np.float32)
    return out


def randomize_linen(variables, seed: int, fraction: float):
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables))
    return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(randomize(flat, seed, fraction)))


def random_linen_variables(model, x, seed: int = 0, fraction: float = 0.5, **kwargs):
    """Variables of ``model`` drawn from its abstract init (no eager init), BN as ``randomize``."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, **kwargs))
    flat = randomize(_from_shapes(traverse_util.flatten_dict(abstract), seed), seed, fraction)
    return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))


_LINEN = {}


def linen(name):
    """(model, variables, x) of a zoo network, initialised once."""
    if name not in _LINEN:
        ctor, shape = zoo_linen.ZOO[name]
        model = ctor()
        x = normal(1, shape)
        abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
        flat = _from_shapes(traverse_util.flatten_dict(abstract), 0)
        _LINEN[name] = (model, jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat)), x)
    return _LINEN[name]


def nnx_module(name, seed: int = 0, fraction: float = 0.5):
    """A fresh NNX zoo module with random BN parameters, in eval mode, and its input."""
    ctor, shape = zoo_nnx.ZOO[name]
    module = nnx.eval_shape(lambda: ctor(nnx.Rngs(0)))
    state = nnx.state(module)
    flat = {
        tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    }
    # NNX leaf paths end in 'value'; randomize() reads the name before it
    renamed = _from_shapes({k[:-1] if k[-1] == "value" else k: v for k, v in flat.items()}, seed)
    values = randomize(renamed, seed, fraction)
    leaves = [values[k[:-1] if k[-1] == "value" else k] for k in flat]
    leaves = [v if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else jnp.asarray(v) for v in leaves]
    nnx.update(module, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), leaves))
    module.eval()
    return module, normal(1, shape)


def close(a, b, tol: float = 1e-4):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


def param_count(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))
