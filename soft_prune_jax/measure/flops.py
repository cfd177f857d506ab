"""The MAC count's records and the whole-model MAC count of any traced function.

Convention (the one pruning papers use; docs/method.md, "Conventions"):
  * MACs are counted per example, for the layers that multiply: every ``conv_general_dilated`` and
    ``dot_general``. A conv costs H_out * W_out * kh * kw * (C_in / groups) * C_out MACs; a dense
    layer costs C_in * C_out MACs (times any extra positions between the batch and the feature axis).
  * FLOPs = 2 * MACs (a multiply and an add). Biases, BatchNorm, ReLU, masks, pooling, residual
    additions and concatenations are *not* counted: they are a few percent of a conv net's work
    and no pruning paper counts them either.
  * Parameters are all leaves of the ``params`` collection (BN scale/bias included; BN running
    statistics excluded), plus a per-layer split for the conv/dense layers.

The per-layer count of a model, dense or cut, is ``traced.macs.count``: it reads the traced graph every
phase works on and returns the ``FlopCount`` defined here (``report.compare`` takes two of them).
``model_macs`` counts the same convention off the jaxpr of any model ``prune_model`` accepts or
returns, for checks that have the model but not its analysis. XLA's ``cost_analysis()`` is only a
cross-check in the tests: it counts SAME-padding taps and elementwise work, so it is approximate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from flax import nnx

from soft_prune_jax.graph.ir import trace

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

    masked_channels: {prunable channel group: its width}, the widths a cut prunes (``traced.macs``:
      the dense widths, or the kept ones of a cut). Both counts of one graph name the same groups
      and layers, so comparing them gives the kept channels (see ``reduction``).
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


def _reduction_pct(before: int, after: int) -> float:
    return 100.0 * (1.0 - after / before) if before else 0.0


def reduction(dense: FlopCount, compact: FlopCount) -> dict[str, float]:
    """Percentage reductions from ``dense`` to ``compact`` (positive = smaller), as the paper reports.

    Channels are those of the prunable groups: total = the dense widths, kept = the compact count's
    widths under the same names (0 for a group it lacks).
    """
    if dense.input_shape != compact.input_shape:
        raise ValueError(f"counts are for different inputs: {dense.input_shape} vs {compact.input_shape}")
    unknown = sorted(set(compact.masked_channels) - set(dense.masked_channels))
    if unknown:
        raise ValueError(
            f"compact model has channel groups the dense one lacks: {unknown[:5]}; "
            f"expected two counts of the same graph"
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
