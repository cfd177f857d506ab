"""A compact user model saved as a ``jax.export`` artifact (StableHLO) beside its arrays.

The compact model of a user's class is a replay of that class's traced computation; where the class
is not importable it cannot be rebuilt, so its inference function is serialised instead:
``apply.jax_export`` (a ``jax.export`` artifact taking the variables and a batch of any size),
``arrays.npz`` (the compact variables) and ``model.json`` (format, the model spec it came from,
input shape, SHA-256 of both files and the array shapes). The batch size is symbolic because the
exported function is the per-example replay under ``jax.vmap`` (the replay itself plans concrete
shapes). Loading checks the digests, so a damaged or truncated directory is an ``ExportError``;
saving writes a temporary sibling and renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from soft_prune_jax.compact.export import ExportError

FORMAT = "soft_prune_jax.user_compact/1"
SPEC_FILE, FUNCTION_FILE, ARRAYS_FILE = "model.json", "apply.jax_export", "arrays.npz"


def _flat(tree, prefix=()) -> dict:
    out = {}
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, Mapping):
            out.update(_flat(value, prefix + (str(key),)))
        else:
            out["/".join(prefix + (str(key),))] = np.asarray(value)
    return out


def _unflat(flat: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(
    directory: str,
    compact,
    variables,
    input_shape: Sequence[int],
    *,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Exports ``compact.apply(variables, x)`` for batches of any size of ``input_shape`` images."""
    if os.path.exists(directory) and not overwrite:
        raise ExportError(f"{directory} exists: pass overwrite=True to replace it")
    treedef = jax.tree_util.tree_structure(variables)
    variables = _unflat(_flat(variables))  # plain nested dicts without empty collections: what load() rebuilds

    def per_example(v, x1):  # the same leaves in the same (sorted-key) order, in the compact model's own tree
        return compact.apply(jax.tree_util.tree_unflatten(treedef, jax.tree_util.tree_leaves(v)), x1[None])[0]

    (batch,) = jax_export.symbolic_shape("batch")
    specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    x = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
    exported = jax_export.export(jax.jit(jax.vmap(per_example, in_axes=(None, 0))))(specs, x)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_export_", dir=parent)
    try:
        with open(os.path.join(tmp, FUNCTION_FILE), "wb") as f:
            f.write(exported.serialize())
        flat = _flat(variables)
        np.savez(os.path.join(tmp, ARRAYS_FILE), **flat)
        spec = {
            "format": FORMAT,
            "input_shape": list(input_shape),
            **dict(extra or {}),
            "shapes": {k: list(v.shape) for k, v in flat.items()},
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


class ExportedModel:
    """A reloaded compact model: ``apply(variables, x, train=False)`` runs the StableHLO artifact."""

    def __init__(self, exported, spec: Mapping[str, Any]):
        self.exported, self.spec = exported, dict(spec)

    def apply(self, variables, x, train: bool = False, **_):
        if train:
            raise ValueError("an exported compact model runs inference only (train=False)")
        return self.exported.call(variables, x)


def read_spec(directory: str) -> dict:
    path = os.path.join(directory, SPEC_FILE)
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read as an exported user model: {type(e).__name__}: {e}") from None
    if spec.get("format") != FORMAT:
        raise ExportError(f"{path} has format {spec.get('format')!r}, expected {FORMAT!r}")
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
        if not os.path.exists(path) or _sha256(path) != spec["sha256"].get(name):
            raise ExportError(f"{path} is missing or damaged: its SHA-256 does not match {SPEC_FILE}")
    with open(os.path.join(directory, FUNCTION_FILE), "rb") as f:
        exported = jax_export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(directory, ARRAYS_FILE)) as arrays:
        flat = {k: arrays[k] for k in arrays.files}
    shapes = {k: list(v.shape) for k, v in flat.items()}
    if shapes != spec["shapes"]:
        raise ExportError(f"{directory}: the arrays' shapes do not match {SPEC_FILE}")
    return ExportedModel(exported, spec), _unflat(flat)
