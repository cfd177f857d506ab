"""``config.dataset`` -> ``DatasetSpec``, by kind: a known name reads the table (no TensorFlow); a tfds
name, ``folder:PATH`` or ``package.module:attribute`` is resolved once per process by its source
module, which may prepare the tfds data, scan the folder or call the factory. Every failure is a
one-line ValueError. The config fields themselves are checked by config_validation (each in one place).
"""

from __future__ import annotations

import json

from soft_prune_jax.training.data.factory_source import factory_spec
from soft_prune_jax.training.data.folder_source import folder_spec
from soft_prune_jax.training.data.spec import DATASETS, SOURCE_FIELDS, DatasetInfo, DatasetSpec, kind_of, known_datasets
from soft_prune_jax.training.data.tfds_by_name import tfds_spec

_SPECS: dict[str, DatasetSpec] = {}


def dataset_spec(config_or_name) -> DatasetSpec:
    """The facts of the configured dataset (a config) or of a known dataset (a name).

    A known name reads the table and needs no TensorFlow; anything else (a tfds name, ``folder:PATH``,
    ``package.module:attribute``) is resolved once per process (``_resolve``), which may prepare
    the tfds data, scan the folder or call the factory. Every failure is a one-line ValueError.
    """
    if isinstance(config_or_name, str) and config_or_name in DATASETS:
        return DATASETS[config_or_name]
    if not hasattr(config_or_name, "get"):
        raise ValueError(
            f"config.dataset={config_or_name!r} is unknown: known datasets are {', '.join(known_datasets())}"
        )
    if config_or_name.get("dataset") in DATASETS:
        return DATASETS[config_or_name.dataset]
    return _resolve(config_or_name)


def _key(config) -> str:
    fields = ("dataset", "data_dir", *SOURCE_FIELDS, "folder_test_fraction", "num_train_examples")
    return json.dumps([config.get(f) for f in fields], default=str)


def _resolve(config) -> DatasetSpec:
    """The spec of config.dataset (not a known name), resolved once per process; one-line ValueErrors."""
    name = config.get("dataset")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"config.dataset={name!r} is invalid: expected a known dataset ({', '.join(known_datasets())}), "
            "a tfds name, 'folder:PATH' or 'package.module:attribute'"
        )
    key = _key(config)
    if key not in _SPECS:
        resolver = {"folder": folder_spec, "factory": factory_spec, "tfds": tfds_spec}[kind_of(name)]
        _SPECS[key] = resolver(config)
    return _SPECS[key]


def num_classes(config) -> int:
    """config.num_classes where set (a custom dataset module), else the configured dataset's class count."""
    return config.get("num_classes") or dataset_spec(config).num_classes


def get_dataset_info(config) -> DatasetInfo:
    """Classes, input shape and example counts of the configured dataset (honours the overrides)."""
    spec = dataset_spec(config)
    validation = config.validation_examples
    num_train = config.get("num_train_examples") or spec.train_size - validation
    num_test = config.get("num_eval_examples") or spec.test_size
    num_validation = min(validation, config.get("num_eval_examples") or validation)
    return DatasetInfo(spec.num_classes, spec.input_shape, num_train, num_test, num_validation)
