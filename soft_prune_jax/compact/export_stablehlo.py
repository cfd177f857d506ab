"""A compact model without its code: a serialized ``jax.export`` artifact (StableHLO) next to its
arrays (orbax), reloadable where the model's classes are not importable.

    export_compact(compact_model, compact_variables, x, "/tmp/m")   # linen
    export_compact(compact_module, None, x, "/tmp/m")                # NNX
    run = load_exported("/tmp/m"); y = run(x)

The artifact is the compact forward pass as a function of (list of arrays, input), exported for
the sample input's shape and dtype (one batch size per artifact: the interpreter plans shapes
concretely). The arrays are stored separately so they stay inspectable and replaceable (e.g.
after fine-tuning the compact model, export again). A damaged or foreign file is one clear error
naming the file.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax import export as jax_export

from soft_prune_jax.compact.prune_model import CompactLinen, CompactModule, _hashable

ARTIFACT = "model.stablehlo"
ARRAYS = "arrays"
SPEC = "spec.json"
FORMAT = "soft_prune_jax.exported/1"


class ExportError(ValueError):
    """An exported model could not be written or read."""


def export_compact(compact, compact_variables: Any, sample_input, directory: str, **kwargs) -> str:
    """Writes ``directory/{model.stablehlo, arrays/, spec.json}``; returns the directory."""
    if isinstance(compact, CompactModule):
        leaves = [v.get_value() for v in compact.variables]
        key = _hashable({**dict(compact.defaults), **kwargs})
    elif isinstance(compact, CompactLinen):
        leaves = compact.treedef.flatten_up_to(compact_variables)
        key = _hashable({**compact.defaults, **kwargs})
    else:
        raise ExportError(f"export_compact takes a model from prune_model, got {type(compact).__name__}")
    program = compact.program
    # PRNG key leaves (an NNX module's Rngs) travel as their raw key data and are wrapped inside.
    keys = {i for i, a in enumerate(leaves) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)}
    leaves = [jax.random.key_data(a) if i in keys else a for i, a in enumerate(leaves)]

    def forward(arrays, x):
        arrays = [jax.random.wrap_key_data(a) if i in keys else a for i, a in enumerate(arrays)]
        return program(arrays, (x,), key)

    shapes = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves]
    x_spec = jax.ShapeDtypeStruct(np.shape(sample_input), sample_input.dtype)
    exported = jax_export.export(jax.jit(forward))(shapes, x_spec)
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ARTIFACT), "wb") as f:
        f.write(exported.serialize())
    arrays = {f"{i:05d}": np.asarray(a) for i, a in enumerate(leaves)}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, ARRAYS), arrays, force=True)
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, SPEC), "w") as f:
        json.dump(
            {
                "format": FORMAT,
                "input_shape": list(np.shape(sample_input)),
                "input_dtype": str(sample_input.dtype),
                "num_arrays": len(leaves),
            },
            f,
            indent=1,
        )
    return directory


def load_exported(directory: str) -> Callable:
    """``run(x)``: the exported compact model with its arrays, no model code needed."""
    directory = os.path.abspath(directory)
    spec_path, artifact = os.path.join(directory, SPEC), os.path.join(directory, ARTIFACT)
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        if spec.get("format") != FORMAT:
            raise ValueError(f"format {spec.get('format')!r}")
    except (OSError, ValueError) as err:
        raise ExportError(f"{spec_path}: not the spec of an exported compact model ({err})") from None
    try:
        with open(artifact, "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not a valid artifact
        raise ExportError(f"{artifact}: not a valid jax.export artifact ({type(err).__name__})") from None
    try:
        arrays = ocp.StandardCheckpointer().restore(os.path.join(directory, ARRAYS))
        leaves = [arrays[f"{i:05d}"] for i in range(spec["num_arrays"])]
    except Exception as err:  # noqa: BLE001
        raise ExportError(
            f"{os.path.join(directory, ARRAYS)}: arrays of the exported model unreadable ({type(err).__name__})"
        ) from None

    def run(x):
        if tuple(np.shape(x)) != tuple(spec["input_shape"]):
            raise ExportError(
                f"input shape {tuple(np.shape(x))} does not match the exported shape "
                f"{tuple(spec['input_shape'])}; export once per batch size"
            )
        return exported.call(leaves, x)

    return run
