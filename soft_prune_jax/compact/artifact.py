"""A compact model without its code: a ``jax.export`` artifact (StableHLO) beside its arrays.

The compact model of a user's class (``prune_model``'s, linen or NNX) is a replay of that class's
traced computation; where the class is not importable it cannot be rebuilt, so its inference
function is serialised instead. The one format, written by ``save`` and read by ``load``:

    apply.jax_export   the forward pass as a function of (variables, x), batch size symbolic
    arrays.npz         the compact variables, one entry per '/'-joined path (inspectable, replaceable)
    model.json         format, per-example input shape and dtype, the arrays' shapes, the SHA-256 of
                       both files above, and any metadata the caller adds (``extra``)

    save("m", compact, compact_variables, x)        # linen: prune_model's (compact, variables)
    save("m", compact_module, None, x)              # NNX: prune_model's compact module
    model, variables = load("m"); y = model.apply(variables, x_of_any_batch_size)

The batch size is symbolic because the exported function is the per-example forward pass under
``jax.vmap`` (the replay plans concrete shapes): every output row must depend on its own input row
only, as in a CNN in evaluation mode. Loading checks the digests and shapes, so a damaged,
truncated or foreign directory is one ``ExportError`` naming the file; saving writes a temporary
sibling and renames it into place. Artifacts of the earlier user-model format
(``soft_prune_jax.user_compact/1``, the same files) still load; the earlier fixed-batch format
(``spec.json`` + ``model.stablehlo``) is refused with the way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from soft_prune_jax.compact.prune_model import CompactLinen, CompactModule, _hashable
from soft_prune_jax.ops import fast_conv


class ExportError(ValueError):
    """A compact model that cannot be saved or loaded (bad arguments, a damaged or foreign directory)."""


FORMAT = "soft_prune_jax.artifact/1"
_READABLE = (FORMAT, "soft_prune_jax.user_compact/1")  # the user-model format: same files, float32 input
SPEC_FILE, FUNCTION_FILE, ARRAYS_FILE = "model.json", "apply.jax_export", "arrays.npz"
_RETIRED_SPEC = "spec.json"  # the fixed-batch format of the retired compact/export_stablehlo.py


def _is_key(a) -> bool:
    return jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _flat(tree, prefix=()) -> dict:
    out = {}
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, Mapping):
            out.update(_flat(value, prefix + (str(key),)))
        else:
            out["/".join(prefix + (str(key),))] = value
    return out


def _unflat(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _forward(compact, variables, kwargs):
    """(names, leaves, fn(leaves, x_batch)) of the model to export, leaves in its own order."""
    if isinstance(compact, CompactModule):
        names, leaves = list(compact.paths), [v.get_value() for v in compact.variables]
        key = _hashable({**dict(compact.defaults), **kwargs})
        return names, leaves, lambda ls, x: compact.program(ls, (x,), key)
    if isinstance(compact, CompactLinen):
        flat, treedef = jax.tree_util.tree_flatten_with_path(variables)[0], compact.treedef
        key = _hashable({**compact.defaults, **kwargs})
        run = lambda ls, x: compact.program(ls, (x,), key)  # noqa: E731
    elif isinstance(compact, nn.Module):  # any linen module (e.g. a hand-narrowed one): its own apply
        flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
        kwargs = {"train": False, **kwargs}
        run = lambda ls, x: compact.apply(jax.tree_util.tree_unflatten(treedef, ls), x, **kwargs)  # noqa: E731
    else:
        raise ExportError(
            f"save takes a model from prune_model (linen or NNX) or a flax.linen Module, got {type(compact).__name__}"
        )
    names = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in flat]
    return names, [leaf for _, leaf in flat], run


@contextlib.contextmanager
def _any_batch_formulation(compact):
    """The convs of ``compact`` formulated for any batch size while it is exported per example:
    'auto' would pick, from the batch-1 shapes it traces, formulations that are slow at batch 64."""
    program = getattr(compact, "program", None)
    if program is None:  # a linen module of its own: its fast_conv.Conv layers
        with fast_conv.flax_conv_formulation("auto_any_batch"):
            yield
        return
    before = program.formulation
    program.formulation = "auto_any_batch" if before == "auto" else before
    try:
        yield
    finally:
        program.formulation = before


def save(
    directory: str,
    compact,
    variables,
    sample_input,
    *,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
    **call_kwargs,
) -> str:
    """Exports ``compact``'s evaluation for batches of any size of inputs shaped like ``sample_input``
    (an array or ``jax.ShapeDtypeStruct`` with a batch axis first); returns the directory.

    variables: the compact variables of a linen model, None for an NNX module. ``call_kwargs`` are
    added to the model's call (prune_model's models already remember the ones they were traced with).
    """
    if os.path.exists(directory) and not overwrite:
        raise ExportError(f"{directory} exists: pass overwrite=True to replace it")
    shape, dtype = tuple(np.shape(sample_input)), np.dtype(getattr(sample_input, "dtype", np.float32))
    if len(shape) < 1:
        raise ExportError(f"sample_input of shape {shape} is invalid: expected a batch axis first")
    names, leaves, run = _forward(compact, variables, call_kwargs)
    if len(set(names)) != len(names):
        raise ExportError(f"variable paths are not unique: {sorted(n for n in names if names.count(n) > 1)[:3]}")
    # PRNG key leaves (an NNX module's Rngs) are stored as their raw key data and wrapped inside.
    keys = {n for n, a in zip(names, leaves) if _is_key(a)}
    arrays = {n: np.asarray(jax.random.key_data(a) if n in keys else a) for n, a in zip(names, leaves)}

    def per_example(tree, x1):
        flat = _flat(tree)
        ls = [jax.random.wrap_key_data(flat[n]) if n in keys else flat[n] for n in names]
        return jax.tree.map(lambda y: y[0], run(ls, x1[None]))

    (batch,) = jax_export.symbolic_shape("batch")
    specs = _unflat({n: jax.ShapeDtypeStruct(a.shape, a.dtype) for n, a in arrays.items()})
    x_spec = jax.ShapeDtypeStruct((batch,) + shape[1:], dtype)
    with _any_batch_formulation(compact):  # the replay sees batch-1 shapes; the artifact runs at any batch
        exported = jax_export.export(jax.jit(jax.vmap(per_example, in_axes=(None, 0))))(specs, x_spec)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_export_", dir=parent)
    try:
        with open(os.path.join(tmp, FUNCTION_FILE), "wb") as f:
            f.write(exported.serialize())
        np.savez(os.path.join(tmp, ARRAYS_FILE), **arrays)
        spec = {
            "format": FORMAT,
            "input_shape": list(shape[1:]),
            "input_dtype": dtype.name,
            **dict(extra or {}),
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
            "sha256": {name: _sha256(os.path.join(tmp, name)) for name in (FUNCTION_FILE, ARRAYS_FILE)},
        }
        with open(os.path.join(tmp, SPEC_FILE), "w") as f:
            json.dump(spec, f, indent=2, sort_keys=True)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return os.path.abspath(directory)


class ExportedModel:
    """A reloaded compact model: ``apply(variables, x)`` runs the StableHLO artifact on any batch size."""

    def __init__(self, exported, spec: Mapping[str, Any]):
        self.exported, self.spec = exported, dict(spec)

    def apply(self, variables, x, train: bool = False, **_):
        if train:
            raise ValueError("an exported compact model runs inference only (train=False)")
        want = tuple(self.spec["input_shape"])
        if tuple(np.shape(x))[1:] != want:
            raise ValueError(
                f"input shape {tuple(np.shape(x))} is invalid: the artifact takes (batch, {', '.join(map(str, want))})"
            )
        return self.exported.call(variables, jnp.asarray(x, self.spec.get("input_dtype", "float32")))


def read_spec(directory: str) -> dict:
    path = os.path.join(directory, SPEC_FILE)
    if not os.path.exists(path) and os.path.exists(os.path.join(directory, _RETIRED_SPEC)):
        raise ExportError(
            f"{directory} holds the retired fixed-batch export (spec.json, model.stablehlo): export the compact "
            f"model again with soft_prune_jax.compact.artifact.save"
        )
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read as an exported compact model: {type(e).__name__}: {e}") from None
    if isinstance(spec, dict) and "format" not in spec and "class" in spec:
        raise ExportError(
            f"{directory} holds a compact model in the old format (a rebuilt {spec['class']} class, orbax arrays), "
            "which this version no longer reads: rerun --phases=prune,finetune, or use a new workdir"
        )
    if not isinstance(spec, dict) or spec.get("format") not in _READABLE:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ExportError(f"{path} has format {found!r}, expected {FORMAT!r}")
    return spec


def is_artifact(directory: str) -> bool:
    try:
        read_spec(directory)
    except ExportError:
        return False
    return True


def load(directory: str):
    """(ExportedModel, variables) from ``save``'s directory; damage is an ``ExportError``."""
    spec = read_spec(directory)
    for name in (FUNCTION_FILE, ARRAYS_FILE):
        path = os.path.join(directory, name)
        if not os.path.exists(path) or _sha256(path) != spec.get("sha256", {}).get(name):
            raise ExportError(f"{path} is missing or damaged: its SHA-256 does not match {SPEC_FILE}")
    try:
        with open(os.path.join(directory, FUNCTION_FILE), "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
        with np.load(os.path.join(directory, ARRAYS_FILE)) as arrays:
            flat = {k: arrays[k] for k in arrays.files}
    except Exception as e:  # noqa: BLE001 - digests matched, so this is a file not written by save
        raise ExportError(f"{directory}: not a valid artifact ({type(e).__name__}: {str(e)[:120]})") from None
    if {k: list(v.shape) for k, v in flat.items()} != spec["shapes"]:
        raise ExportError(f"{directory}: the arrays' shapes do not match {SPEC_FILE}")
    return ExportedModel(exported, spec), _unflat({k: jnp.asarray(v) for k, v in flat.items()})
