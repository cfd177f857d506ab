"""Save a compact model and load it back with no dense model or training config at hand.

A directory holds ``model.json`` (architecture class, constructor arguments, array shapes and
SHA-256 digests) and ``arrays/`` (an orbax checkpoint of the variables). Loading rebuilds the module
from the JSON, checks the stored shapes against what that module expects, restores, and verifies
every digest, so another architecture, mismatched widths or a truncated/corrupt checkpoint is a
clear ``ExportError``, never a silently wrong model. Saving writes to a temporary sibling and renames
it into place, and never replaces an existing directory unless asked to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from flax.core import unfreeze

from soft_prune_jax.compact.fold import fold_batchnorm
from soft_prune_jax.compact.structure import describe
from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.models import MODEL_CLASSES

FORMAT = "soft_prune_jax.compact/1"
SPEC_FILE = "model.json"
ARRAYS_DIR = "arrays"


class ExportError(ValueError):
    """A compact-model directory that cannot be loaded as what it claims to be."""


# ---- module <-> JSON ------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    if isinstance(value, MaskConfig):
        return {"__mask_config__": dataclasses.asdict(value)}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot serialise module attribute value {value!r} of type {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__mask_config__" in value:
        return MaskConfig(**value["__mask_config__"])
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def module_spec(model: nn.Module) -> dict[str, Any]:
    """{'class': ..., 'kwargs': {...}}: everything needed to rebuild ``model``."""
    cls = type(model).__name__
    if MODEL_CLASSES.get(cls) is not type(model):
        raise ExportError(f"cannot export {cls}: known model classes are {', '.join(sorted(MODEL_CLASSES))}")
    kwargs = {
        f.name: _to_json(getattr(model, f.name))
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name")
    }
    return {"class": cls, "kwargs": kwargs}


def module_from_spec(spec: dict[str, Any]) -> nn.Module:
    cls = MODEL_CLASSES.get(spec.get("class"))
    if cls is None:
        raise ExportError(f"unknown model class {spec.get('class')!r}; known: {', '.join(sorted(MODEL_CLASSES))}")
    try:
        return cls(**{k: _from_json(v) for k, v in spec["kwargs"].items()})
    except (TypeError, ValueError) as e:
        raise ExportError(f"cannot rebuild {cls.__name__} from its stored arguments: {e}") from e


# ---- variables ------------------------------------------------------------------------------


def _flat(variables) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(unfreeze(dict(variables)))
    return {"/".join(k): np.asarray(v) for k, v in flat.items()}


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _input_channels(model: nn.Module, flat: dict[str, np.ndarray]) -> int:
    key = "params/" + "/".join(describe(model).input_kernel)
    return int(flat[key].shape[2])


def expected_shapes(model: nn.Module, input_channels: int) -> dict[str, tuple[int, ...]]:
    """Variable shapes the module creates (parameter shapes do not depend on the spatial size)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, input_channels)), train=False)
    )
    return {k: tuple(v.shape) for k, v in _flat_shapes(shapes).items()}


def _flat_shapes(tree) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(unfreeze(dict(tree))).items()}


def save_compact(
    directory: str,
    model: nn.Module,
    variables,
    *,
    overwrite: bool = False,
    fold_bn: bool = False,
    extra: dict[str, Any] | None = None,
) -> str:
    """Writes ``model`` and ``variables`` to ``directory``; returns its absolute path.

    fold_bn: export for inference with BatchNorm folded into the convs where that is exact
      (``fold.fold_batchnorm``); the reloaded model is then the folded one.
    extra: JSON-serialisable metadata stored beside the spec (e.g. MACs, source workdir).
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise ExportError(f"{directory} already exists; pass overwrite=True to replace it")
    if fold_bn:
        model, variables = fold_batchnorm(model, variables)
    flat = _flat(variables)
    expected = expected_shapes(model, _input_channels(model, flat))
    got = {k: tuple(v.shape) for k, v in flat.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))[:3]
        raise ExportError(f"variables do not fit {type(model).__name__}: first differences {diff}")
    spec = {
        "format": FORMAT,
        "model": module_spec(model),
        "input_channels": _input_channels(model, flat),
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": _digest(v)} for k, v in flat.items()},
        "extra": extra or {},
    }
    if jax.process_count() > 1 and jax.process_index() != 0:
        _sync_processes(f"save_compact {directory}")  # process 0 writes the one copy on the shared workdir
        return directory
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        with ocp.StandardCheckpointer(**_this_process_only()) as ckptr:
            ckptr.save(os.path.join(staging, ARRAYS_DIR), jax.tree.map(np.asarray, unfreeze(dict(variables))))
        with open(os.path.join(staging, SPEC_FILE), "w") as f:
            json.dump(spec, f, indent=1, sort_keys=True)
        if os.path.exists(directory):  # overwrite=True: swap in only after the new copy is complete
            old = directory + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(directory, old)
            os.rename(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if jax.process_count() > 1:
        _sync_processes(f"save_compact {directory}")
    return directory


def _this_process_only() -> dict[str, Any]:
    """StandardCheckpointer options that make orbax read/write from this process alone (no barriers):
    an export is small host data, written once by process 0 and read by each process on its own."""
    if jax.process_count() == 1:
        return {}
    index = jax.process_index()
    return {
        "multiprocessing_options": ocp.options.MultiprocessingOptions(
            primary_host=index, active_processes={index}, barrier_sync_key_prefix=f"export_process_{index}"
        )
    }


def _sync_processes(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def read_spec(directory: str) -> dict[str, Any]:
    path = os.path.join(os.fspath(directory), SPEC_FILE)
    if not os.path.isdir(directory):
        raise ExportError(f"{directory} is not a directory holding an exported compact model")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: {directory} is not an exported compact model") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is corrupt ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ExportError(
            f"{path} has format {spec.get('format') if isinstance(spec, dict) else None!r}; expected {FORMAT!r}"
        )
    return spec


def load_compact(directory: str, expect_class: str | None = None):
    """Returns (model, variables) from a directory written by ``save_compact``.

    expect_class: refuse a directory holding another architecture class (e.g. 'PreActResNet').
    """
    spec = read_spec(directory)
    model = module_from_spec(spec["model"])
    if expect_class is not None and type(model).__name__ != expect_class:
        raise ExportError(f"{directory} holds a {type(model).__name__}, expected a {expect_class}")
    expected = expected_shapes(model, int(spec["input_channels"]))
    stored = {k: tuple(v["shape"]) for k, v in spec["arrays"].items()}
    if stored != expected:
        diff = sorted(set(stored.items()) ^ set(expected.items()))[:3]
        raise ExportError(
            f"{directory}: stored arrays do not match the widths in {SPEC_FILE}: first differences {diff}"
        )
    target = traverse_util.unflatten_dict(
        {tuple(k.split("/")): jax.ShapeDtypeStruct(v, jnp.dtype(spec["arrays"][k]["dtype"])) for k, v in stored.items()}
    )
    arrays = os.path.join(os.fspath(directory), ARRAYS_DIR)
    try:
        with ocp.StandardCheckpointer(**_this_process_only()) as ckptr:
            restored = ckptr.restore(os.path.abspath(arrays), target)
    except Exception as e:  # orbax/tensorstore raise many types for missing or truncated files
        raise ExportError(f"{arrays} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    flat = _flat(restored)
    for key, meta in spec["arrays"].items():
        if key not in flat or _digest(flat[key]) != meta["sha256"]:
            raise ExportError(f"{directory}: array {key} is corrupt (checksum mismatch)")
    variables = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})
    return model, variables
