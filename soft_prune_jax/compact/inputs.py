"""Checked inference entry point for (compact) models: wrong inputs are one clear error.

A Flax model applied to a wrongly shaped input may fail deep inside XLA with a multi-line message,
or worse, silently compute something: an unbatched (H, W, C) image runs (Flax convs accept any
number of batch dimensions) and yields one wrong row of logits; a uint8 image runs without its
normalisation; an image too small for the network's poolings is pooled to nothing and averaged to
NaN. ``check_input`` refuses all of these before any compute, from shapes alone
(``jax.eval_shape``); ``checked_apply`` wraps ``model.apply`` with it.

    model, variables = export.load_compact(directory)
    predict = inputs.checked_apply(model, variables)
    logits = predict(images)  # float (N, H, W, C) with C = the model's input channels
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.compact.structure import describe


def input_channels(model: nn.Module, variables: Mapping[str, Any]) -> int:
    """The channels the model's first conv reads (axis 2 of its kernel)."""
    node = variables["params"]
    for key in describe(model).input_kernel:
        node = node[key]
    return int(np.shape(node)[2])


def check_input(model: nn.Module, variables: Mapping[str, Any], x) -> None:
    """Raises a one-line ValueError naming the problem when ``x`` is not a valid input batch."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(
            f"input of type {type(x).__name__} is invalid: expected an array of shape (batch, height, width, channels)"
        )
    shape = tuple(int(d) for d in shape)
    channels = input_channels(model, variables)
    if len(shape) != 4:
        raise ValueError(
            f"input shape {shape} is invalid: expected 4 axes (batch, height, width, channels={channels})"
            + (", add a batch axis: x[None]" if len(shape) == 3 else "")
        )
    if shape[-1] != channels:
        raise ValueError(
            f"input shape {shape} is invalid: {type(model).__name__} reads {channels} channel(s) "
            f"on the last axis (NHWC layout), got {shape[-1]}"
        )
    if min(shape) < 1:
        raise ValueError(f"input shape {shape} is invalid: expected every axis >= 1")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"input dtype {np.dtype(dtype).name} is invalid: expected a floating dtype "
            "(float32, bfloat16, float16) holding normalised images"
        )
    _check_spatial_size(model, variables, jax.ShapeDtypeStruct(shape, dtype))


def _check_spatial_size(model, variables, spec) -> None:
    """Every intermediate output must be non-empty: too small an image is pooled to nothing."""
    try:
        _, state = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
            variables,
            spec,
        )
    except Exception as e:  # shape errors of any layer: report the first line only
        first = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(
            f"input shape {spec.shape} does not fit {type(model).__name__} ({type(e).__name__}: {first})"
        ) from None
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["intermediates"]):
        if 0 in leaf.shape:
            where = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path[:-1])
            raise ValueError(
                f"input shape {spec.shape} is too small for {type(model).__name__}: the output of "
                f"{where} would be {tuple(leaf.shape)}; expected larger height and width"
            )


def checked_apply(model: nn.Module, variables: Mapping[str, Any]) -> Callable[[Any], jax.Array]:
    """A jitted ``x -> logits`` (evaluation mode) that checks every new input shape/dtype first."""
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    checked: set = set()

    def predict(x):
        key = (tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__)))
        if key not in checked:  # shapes alone decide validity: check each once, like jit compiles once
            check_input(model, variables, x)
            checked.add(key)
        return apply(variables, x)

    return predict
