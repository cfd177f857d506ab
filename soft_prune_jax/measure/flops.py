"""Analytic multiply-accumulate (MAC) and parameter counts, read from shapes only.

Convention (the one pruning papers use; docs/method.md, "Conventions"):
  * MACs are counted per example, for the layers that multiply: every ``nn.Conv`` and ``nn.Dense``
    (any module with its own 'kernel' parameter in their layouts).
    A conv costs H_out * W_out * kh * kw * (C_in / groups) * C_out MACs; a dense layer costs
    C_in * C_out MACs (times any extra positions between the batch and the feature axis).
  * FLOPs = 2 * MACs (a multiply and an add). Biases, BatchNorm, ReLU, masks, pooling, residual
    additions and concatenations are *not* counted: they are a few percent of a conv net's work
    and no pruning paper counts them either. (The SCP reference code counts the conv bias as one
    extra MAC per output; our convs have none.)
  * Parameters are all leaves of the ``params`` collection (BN scale/bias included; BN running
    statistics excluded), plus a per-layer split for the conv/dense layers.

How: the model is applied under ``jax.eval_shape`` with ``flax.linen.intercept_methods`` watching
every ``nn.Conv`` / ``nn.Dense`` call, so the counts come from the real module tree and its real
shapes while nothing is computed. Layers that a compact model dropped (the ``conv`` helper skips
convs with an empty channel set) simply do not appear. XLA's ``cost_analysis()`` is only used as a
cross-check in the tests: it counts SAME-padding taps and elementwise work, so it is approximate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from soft_prune_jax.graph.ir import trace
from soft_prune_jax.method import masks as M

CONV, DENSE = "conv", "dense"


@dataclasses.dataclass(frozen=True)
class LayerCount:
    """One conv or dense layer. ``macs`` are per example; ``params`` are this layer's own leaves."""

    path: str  # module path, e.g. "block3/conv1"
    kind: str  # "conv" | "dense"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]  # () for dense layers
    output_spatial: tuple[int, ...]  # () for dense layers on flat inputs
    macs: int
    params: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Per-layer rows and totals for one model at one input shape (per example).

    masked_channels: {masked BN layer path: channels it acts on}, in execution order; the widths
      that SCP's masks prune. A compact model keeps the module names, so comparing two counts
      gives the kept channels (see ``reduction``).
    """

    layers: tuple[LayerCount, ...]
    params: int  # every parameter leaf of the model
    masked_channels: Mapping[str, int]
    input_shape: tuple[int, ...]  # one example, without the batch axis

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def layer_params(self) -> int:
        """Parameters of the counted conv/dense layers only (the rest is BN scale/bias)."""
        return sum(layer.params for layer in self.layers)

    def by_path(self) -> dict[str, LayerCount]:
        return {layer.path: layer for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); ``from_dict`` inverts it."""
        return {
            "input_shape": list(self.input_shape),
            "macs": self.macs,
            "flops": self.flops,
            "params": self.params,
            "masked_channels": dict(self.masked_channels),
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlopCount:
        layers = tuple(
            LayerCount(
                **{**row, "kernel_size": tuple(row["kernel_size"]), "output_spatial": tuple(row["output_spatial"])}
            )
            for row in data["layers"]
        )
        return cls(
            layers=layers,
            params=int(data["params"]),
            masked_channels={k: int(v) for k, v in data["masked_channels"].items()},
            input_shape=tuple(data["input_shape"]),
        )


def _example_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) == 4:  # (N, H, W, C): the batch axis is ignored, counts are per example
        shape = shape[1:]
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"input_shape={tuple(input_shape)!r} is invalid: expected positive ints (H, W, C) or (N, H, W, C)"
        )
    return shape


def _num_leaves(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _own_kernel(module: nn.Module):
    """The module's own (not a submodule's) 'kernel' parameter, or None."""
    if not module.has_variable("params", "kernel"):
        return None
    return module.get_variable("params", "kernel")


def _layer_row(module: nn.Module, x, y) -> Optional[LayerCount]:
    """The count for one intercepted call, or None for modules that do not multiply by a kernel.

    Recognised by their own 'kernel' parameter rather than by class, so drop-in replacements of
    ``nn.Conv`` (e.g. ``fast_conv.Conv``, same kernel layout (kh, kw, C_in/groups, C_out)) count too.
    """
    if isinstance(module, nn.ConvTranspose):
        raise ValueError(f"{'/'.join(module.path)}: transposed convolutions are not supported by flops.count")
    kernel = _own_kernel(module)
    if kernel is None:
        return None
    if kernel.ndim == 2:
        kind, kernel_size = DENSE, ()
    elif kernel.ndim == x.ndim == y.ndim:
        kind, kernel_size = CONV, tuple(int(k) for k in kernel.shape[:-2])
    else:
        raise ValueError(
            f"{'/'.join(module.path)}: a kernel of shape {kernel.shape} on inputs of shape {x.shape} "
            f"is neither a dense (2-d) nor a conv kernel; expected nn.Dense or nn.Conv layouts"
        )
    # One output position costs one MAC per kernel weight feeding it; kernel.size / C_out is
    # kh*kw*C_in/groups for a conv and C_in for a dense layer, so this is the formula above.
    positions = math.prod(y.shape[1:-1])
    return LayerCount(
        path="/".join(module.path),
        kind=kind,
        in_channels=int(x.shape[-1]),
        out_channels=int(y.shape[-1]),
        kernel_size=kernel_size,
        output_spatial=tuple(int(d) for d in y.shape[1:-1]),
        macs=int(positions * math.prod(kernel.shape)),
        params=_num_leaves(module.variables["params"]),
    )


def count(model: nn.Module, variables: Optional[Mapping[str, Any]], input_shape: Sequence[int]) -> FlopCount:
    """MACs and parameters of ``model`` for one example of ``input_shape``; nothing is computed.

    Args:
      model: a Flax module called as ``model.apply(variables, x)`` (evaluation mode by default).
      variables: the full variables dict ({'params': ..., 'batch_stats': ...}); arrays or
        ``jax.ShapeDtypeStruct``s. None initialises shapes from the model itself.
      input_shape: one example (H, W, C), or a batch shape (N, H, W, C) whose N is ignored.
    """
    shape = _example_shape(input_shape)
    x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
    if variables is None:
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    if not isinstance(variables, Mapping) or "params" not in variables:
        keys = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"variables must be the full Flax variables dict with a 'params' collection, got {keys}")

    rows: list[LayerCount] = []
    call_order: list[str] = []  # masked layers in execution order (the params tree is sorted by name)

    def record(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            row = _layer_row(context.module, args[0], y)
            if row is not None:
                rows.append(row)
            elif (context.module.name or "").startswith(M.MASKED_PREFIX):
                call_order.append("/".join(context.module.path))
        return y

    with nn.intercept_methods(record):
        jax.eval_shape(model.apply, variables, x)

    params = variables["params"]
    widths = {name: math.prod(layer["scale"].shape) for name, layer in M.masked_layers(params).items()}
    order = [name for name in dict.fromkeys(call_order) if name in widths]
    masked = {name: widths[name] for name in order + sorted(set(widths) - set(order))}
    return FlopCount(layers=tuple(rows), params=_num_leaves(params), masked_channels=masked, input_shape=shape)


def _reduction_pct(before: int, after: int) -> float:
    return 100.0 * (1.0 - after / before) if before else 0.0


def reduction(dense: FlopCount, compact: FlopCount) -> dict[str, float]:
    """Percentage reductions from ``dense`` to ``compact`` (positive = smaller), as the paper reports.

    Channels are those of the masked layers (the ones SCP prunes): total = the dense model's masked
    widths, kept = the compact model's widths under the same names (0 for a layer it dropped).
    Before surgery, ``masks.kept_channels(masks.hard_masks(params))`` gives the same kept count.
    """
    if dense.input_shape != compact.input_shape:
        raise ValueError(f"counts are for different inputs: {dense.input_shape} vs {compact.input_shape}")
    unknown = sorted(set(compact.masked_channels) - set(dense.masked_channels))
    if unknown:
        raise ValueError(
            f"compact model has masked layers the dense one lacks: {unknown[:5]}; "
            f"expected the same model class with smaller widths"
        )
    total = sum(dense.masked_channels.values())
    kept = sum(compact.masked_channels.get(name, 0) for name in dense.masked_channels)
    return {
        "dense_macs": dense.macs,
        "compact_macs": compact.macs,
        "macs_reduction_pct": _reduction_pct(dense.macs, compact.macs),
        "dense_params": dense.params,
        "compact_params": compact.params,
        "params_reduction_pct": _reduction_pct(dense.params, compact.params),
        "total_channels": total,
        "kept_channels": kept,
        "channel_reduction_pct": _reduction_pct(total, kept),
    }


def traced_macs(fn, *args) -> int:
    """MACs of ``fn(*args)`` (the whole batch) read off its jaxpr: every ``conv_general_dilated``
    (output size x kernel taps x input channels per group) and ``dot_general`` (output size x the
    contracted size). Works for any traceable model, e.g. one ``prune_model`` accepts or returns."""
    g = trace(lambda _, *xs: fn(*xs), (), *args)
    total = 0
    for e in g.eqns:
        if e.name == "conv_general_dilated":
            rhs, out = g.shapes[e.ins[1]], g.shapes[e.outs[0]]
            out_features = rhs[e.params["dimension_numbers"].rhs_spec[0]]
            total += math.prod(out) * (math.prod(rhs) // max(out_features, 1))
        elif e.name == "dot_general":
            (lc, _), _ = e.params["dimension_numbers"]
            lhs = g.shapes[e.ins[0]]
            total += math.prod(g.shapes[e.outs[0]]) * math.prod(lhs[a] for a in lc)
    return int(total)


def model_macs(model, *args, **kwargs) -> float:
    """MACs per example of any model ``prune_model`` accepts or returns, called as it is called:
    ``model_macs(linen_model, variables, x, **apply_kwargs)``, ``model_macs(nnx_module, x)``, or a
    compact model (``model_macs(compact_model, compact_variables, x)``). Batch = ``x.shape[0]``."""
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        x = args[0]
        total = traced_macs(lambda s, *xs: nnx.merge(graphdef, s)(*xs, **kwargs), state, *args)
    elif hasattr(model, "apply"):
        variables, x = args[0], args[1]
        total = traced_macs(lambda v, x_: model.apply(v, x_, **kwargs), variables, x)
    else:
        raise TypeError(
            f"model_macs takes a linen model, an NNX module or a prune_model result, got {type(model).__name__}"
        )
    return total / x.shape[0]
