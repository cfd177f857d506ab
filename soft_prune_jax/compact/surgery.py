"""Physical channel pruning: (model, variables) -> (compact model, compact variables), exactly.

A pruned channel of the hard-masked network outputs exactly 0, so cutting it out changes nothing:
``compact.apply(compact_vars, x) == model.apply(vars, x)`` (up to float rounding). Which arrays each
mask governs comes from ``structure.describe``; this module only plans kept channels and slices.

    compact, compact_vars = prune(model, variables)              # the model's own hard masks
    compact, compact_vars = prune(model, variables, round_to=8)  # widths aligned to multiples of 8
    compact, compact_vars = prune(dense, variables, masks=ns)    # externally chosen masks
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from soft_prune_jax.compact import align
from soft_prune_jax.compact.structure import Structure, describe
from soft_prune_jax.method import masks as M
from soft_prune_jax.method.units import MASK_OVERRIDE


class SurgeryError(ValueError):
    """The variables do not fit the model, or the masks do not fit the structure."""


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    kept: np.ndarray  # sorted indices of kept channels
    total: int
    from_hard_mask: int  # how many were kept by the mask itself (before rounding / keep-one)
    kept_by_fallback: bool  # the layer would have lost every channel; the best-ranked one was kept


def _pi(model: nn.Module, layer: Mapping) -> np.ndarray:
    config = model.mask or M.MaskConfig()
    q = M.deactivation_probability(layer["scale"], layer["bias"], config.eps)
    return np.asarray(M.prune_probability(q, config.k, config.c))


def _z(model: nn.Module, layer: Mapping) -> np.ndarray:
    """SCP's own ranking: lower z = more alive; it still orders the channels whose pi saturated."""
    config = model.mask or M.MaskConfig()
    return np.asarray(M.deactivation_z(layer["scale"], layer["bias"], config.eps))


def default_scores(model: nn.Module, variables) -> dict[str, np.ndarray]:
    """{unit: -z} for every masked unit: the ``scores`` ``plan`` uses when none are given."""
    layers = M.masked_layers(variables.get("params", variables))
    return {g.name: -_z(model, layers[g.name]) for g in describe(model).groups if g.name in layers}


def model_hard_masks(model: nn.Module, params, keep_at_least_one: bool = True) -> dict[str, np.ndarray]:
    """The 0/1 masks the model itself applies at evaluation, per masked BN unit (all ones without masks).

    keep_at_least_one=False gives the raw [pi < 0.5] masks, before plain chains keep their best channel.
    """
    params = params.get("params", params)
    layers = M.masked_layers(params)
    out = {}
    for group in describe(model).groups:
        layer = layers[group.name]
        if model.mask is None:
            out[group.name] = np.ones(np.shape(layer["scale"]), np.float32)
            continue
        pi = jnp.asarray(_pi(model, layer))
        if group.keep_at_least_one and keep_at_least_one:  # the same rule as MaskedBNReLU's
            out[group.name] = np.asarray(M.hard_mask_keep_one(pi, jnp.asarray(_z(model, layer))))
        else:
            out[group.name] = np.asarray(M.hard_mask(pi))
    return out


def plan(
    model: nn.Module,
    variables,
    *,
    round_to: int | str | align.Auto | align.Chosen = 1,
    masks: Optional[Mapping[str, np.ndarray]] = None,
    scores: Optional[Mapping[str, np.ndarray]] = None,
) -> dict[str, LayerPlan]:
    """Kept channel indices per masked unit.

    round_to: keep the next-best channels (highest score) until every non-empty kept width is a
      multiple of ``round_to`` (or the full width). Empty layers stay empty. 'auto' (or an
      ``align.Auto``): per unit, the width >= its kept count whose convs measured fastest on this
      device (``compact/align.py``); an ``align.Chosen``: the widths it chooses from the counts.
    masks: {unit name: 0/1 array} to use instead of the model's own hard masks.
    scores: {unit name: array}, higher = more worth keeping: picks the keep-one fallback and the
      round_to padding (a method's own ranking, e.g. Network Slimming's |scale|). None = SCP's
      -z, z = (eps - beta) / |gamma| (``default_scores``): the same order as lowest pi wherever pi
      differs, and a real order where pi saturated at sigmoid(k delta) for every dead channel.
    """
    if round_to == align.AUTO:
        round_to = align.Auto()
    bad_int = not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1
    if not isinstance(round_to, (align.Auto, align.Chosen)) and bad_int:
        raise ValueError(f"round_to={round_to!r} is invalid: expected an int >= 1 (1 = no alignment) or 'auto'")
    params = variables["params"]
    structure = describe(model)
    layers = M.masked_layers(params)
    names = [g.name for g in structure.groups]
    missing = [n for n in names if n not in layers]
    if missing:
        raise SurgeryError(f"variables do not fit {type(model).__name__}: masked units {missing[:3]} are missing")
    if masks is None:
        masks = model_hard_masks(model, params, keep_at_least_one=False)  # the fallback is applied below
    else:
        unknown = sorted(set(masks) - set(names))
        if unknown or len(masks) != len(names):
            raise SurgeryError(
                f"masks must have exactly one entry per masked unit; unknown: {unknown[:3]}, "
                f"missing: {sorted(set(names) - set(masks))[:3]}"
            )
    if scores is None:
        scores = default_scores(model, variables)
    elif set(names) - set(scores):
        raise SurgeryError(
            f"scores must have an entry per masked unit; missing: {sorted(set(names) - set(scores))[:3]}"
        )

    auto_widths = None
    if isinstance(round_to, align.Auto):  # the unaligned counts first, then the fastest widths above them
        base = plan(model, variables, round_to=1, masks=masks, scores=scores)
        counts, totals = {n: len(p.kept) for n, p in base.items()}, {n: p.total for n, p in base.items()}
        auto_widths = align.auto_widths(model, variables, structure, counts, totals, round_to)
    elif isinstance(round_to, align.Chosen):  # widths chosen by the caller (e.g. by latency), never below a count
        base = plan(model, variables, round_to=1, masks=masks, scores=scores)
        counts = {n: len(p.kept) for n, p in base.items()}
        chosen = round_to.choose(counts)
        auto_widths = {n: min(base[n].total, max(int(chosen.get(n, c)), c)) for n, c in counts.items()}
    result = {}
    for group in structure.groups:
        total = int(np.shape(layers[group.name]["scale"])[0])
        mask = np.asarray(masks[group.name]).reshape(-1)
        if mask.shape != (total,):
            raise SurgeryError(f"mask for {group.name} has shape {mask.shape}, expected ({total},)")
        keep = mask > 0
        rank = -np.asarray(scores[group.name], np.float64).reshape(-1)  # ascending = most worth keeping first
        if rank.shape != (total,):
            raise SurgeryError(f"scores for {group.name} have shape {rank.shape}, expected ({total},)")
        fallback = False
        if group.keep_at_least_one and not keep.any() and total:
            keep[np.argmin(rank)] = True
            fallback = True
        from_mask = int(np.sum(mask > 0))
        count = int(keep.sum())
        if auto_widths is not None:
            target = auto_widths[group.name]
        else:
            target = min(total, -(-count // round_to) * round_to) if count else 0
        if target > count:
            order = np.argsort(rank, kind="stable")
            extra = [i for i in order if not keep[i]][: target - count]
            keep[extra] = True
        result[group.name] = LayerPlan(np.flatnonzero(keep), total, from_mask, fallback)
    return result


def prune(
    model: nn.Module,
    variables,
    *,
    round_to: int = 1,
    masks: Optional[Mapping[str, np.ndarray]] = None,
    scores: Optional[Mapping[str, np.ndarray]] = None,
):
    """Returns (compact_model, compact_variables): the same class with smaller widths, no masks.

    The compact model's outputs equal ``apply_with_masks(model, variables, masks_of(plan))``; with
    ``round_to=1`` and no ``masks`` that is simply ``model.apply(variables, x, train=False)``.
    """
    structure = describe(model)
    kept = {name: p.kept for name, p in plan(model, variables, round_to=round_to, masks=masks, scores=scores).items()}
    return slice_to(structure, variables, kept)


def slice_to(structure: Structure, variables, kept: Mapping[str, np.ndarray]):
    """Slices every governed array by its group's kept indices and fits them into the compact model."""
    flat = traverse_util.flatten_dict(unfreeze(dict(variables)))
    for group in structure.groups:
        for s in group.slices:
            key = (s.collection,) + s.path
            if key in flat:  # parts of an already-compact model may be absent
                flat[key] = np.take(np.asarray(flat[key]), kept[group.name], axis=s.axis)
    compact = structure.rebuild(kept)
    return compact, fit_variables(compact, flat, structure.input_kernel)


def fit_variables(model: nn.Module, flat: Mapping[tuple, np.ndarray], input_kernel) -> dict:
    """The variables ``model`` expects, taken from ``flat`` ({(collection, *path): array}).

    Arrays the model does not create (parts of removed blocks, empty kernels) are dropped; a missing
    array or a wrong shape is an error, so a rebuilt model can never run on misfit variables.
    """
    in_kernel = ("params",) + tuple(input_kernel)
    if in_kernel not in flat:
        raise SurgeryError(f"variables have no input conv kernel at {'/'.join(input_kernel)}")
    in_channels = flat[in_kernel].shape[2]
    # Parameter shapes do not depend on the spatial size, so any size that survives the strides works.
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, in_channels)), train=False))
    out = {}
    for key, leaf in traverse_util.flatten_dict(unfreeze(dict(target))).items():
        if key not in flat or tuple(flat[key].shape) != tuple(leaf.shape):
            got = None if key not in flat else tuple(flat[key].shape)
            raise SurgeryError(
                f"{'/'.join(key)}: {type(model).__name__} expects shape {tuple(leaf.shape)}, the variables give {got}"
            )
        out[key] = jnp.asarray(flat[key], dtype=leaf.dtype)
    return traverse_util.unflatten_dict(out)


def masks_of(layer_plans: Mapping[str, LayerPlan]) -> dict[str, np.ndarray]:
    """0/1 masks that keep exactly the planned channels."""
    out = {}
    for name, p in layer_plans.items():
        m = np.zeros(p.total, np.float32)
        m[p.kept] = 1.0
        out[name] = m
    return out


def apply_with_masks(model: nn.Module, variables, masks: Mapping[str, np.ndarray], x):
    """Evaluation of ``model`` with fixed 0/1 masks in place of its own hard masks."""
    override = traverse_util.unflatten_dict(
        {tuple(name.split("/")) + ("keep",): jnp.asarray(m, jnp.float32) for name, m in masks.items()}
    )
    return model.apply({**variables, MASK_OVERRIDE: override}, x, train=False)


def randomize_bn(variables, seed: int, prune_fraction: float = 0.5):
    """Random BN parameters and statistics whose hard masks drop about ``prune_fraction`` of channels.

    For benchmarks and tests without training: in every masked unit a random ``prune_fraction`` of
    channels gets a very negative bias (pi ~ 1); the rest get a positive one (pi ~ 0). Unmasked BNs
    get random statistics too, so no layer is an identity by accident.
    """
    if not 0.0 <= prune_fraction <= 1.0:
        raise ValueError(f"prune_fraction={prune_fraction!r} is invalid: expected a number in [0, 1]")
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(unfreeze(dict(jax.tree.map(np.asarray, variables))))
    for key in sorted(flat):
        leaf = key[-1]
        if leaf not in ("scale", "bias", "mean", "var") or flat[key].ndim != 1:
            continue
        n = flat[key].shape[0]
        masked = any(part.startswith(M.MASKED_PREFIX) for part in key)
        if leaf == "scale":
            value = rng.uniform(0.5, 1.5, n)
        elif leaf == "bias" and masked:
            value = np.where(rng.random(n) < prune_fraction, -10.0, rng.uniform(0.1, 1.0, n))
        elif leaf == "bias" or leaf == "mean":
            value = rng.normal(0.0, 0.3, n)
        else:
            value = rng.uniform(0.5, 2.0, n)
        flat[key] = jnp.asarray(value, jnp.float32)
    return traverse_util.unflatten_dict(flat)


def random_variables(model: nn.Module, input_shape, seed: int = 0, prune_fraction: float = 0.5):
    """Variables for ``model`` drawn in NumPy from the shapes alone (no compile of ``model.init``).

    Kernels are He-normal (fan-in), biases zero, BN parameters as ``randomize_bn``. For benchmarks
    and tests of full-size models without training.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(tuple(input_shape)), train=False))
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(unfreeze(dict(shapes)))
    for key, leaf in flat.items():
        shape = tuple(leaf.shape)
        if key[-1] == "kernel" and 0 not in shape:
            fan_in = int(np.prod(shape[:-1]))
            flat[key] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        else:
            flat[key] = np.zeros(shape, np.float32)
    return randomize_bn(traverse_util.unflatten_dict(flat), seed, prune_fraction)
