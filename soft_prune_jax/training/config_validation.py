"""Checks an experiment config before any compute: every failure is one line naming the bad value.

The mask hyper-parameters are checked by ``masks.MaskConfig`` itself and the dataset fields
(dataset name, num_classes, example counts, ImageNet's manual_dir) by ``data.validate_config``;
this module checks the rest of the shared schema and the fit between batch sizes and devices.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional

from soft_prune_jax.training import data, distributed
from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.models import model_names
from soft_prune_jax.methods import method_names
from soft_prune_jax.training.parallel import PARALLEL_KINDS

REQUIRED_FIELDS = (
    "model", "dataset", "num_classes", "data_dir", "manual_dir", "batch_size", "eval_batch_size", "num_epochs",
    "learning_rate", "lr_boundaries", "lr_decay", "momentum", "nesterov", "weight_decay", "method", "mask",
    "sparsity_lambda", "sparsity_s", "slimming", "finetune_epochs", "finetune_learning_rate", "round_to",
    "parallel", "checkpoint_every_epochs", "keep_checkpoints", "log_every_steps", "seed", "num_train_examples",
    "num_eval_examples", "validation_examples", "benchmark_batch_sizes", "benchmark_runs", "distributed",
)


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(config, name: str, low: int) -> int:
    value = config[name]
    if not _is_int(value) or value < low:
        raise ValueError(f"config.{name}={value!r} is invalid: expected an int >= {low}")
    return int(value)


def _number_in(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    ok = _is_number(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"config.{name}={value!r} is invalid: expected a number in {interval}")


def validate(config, *, num_devices: Optional[int] = None) -> None:
    """Raises ValueError on the first invalid field. ``num_devices`` defaults to ``jax.device_count()``."""
    missing = [name for name in REQUIRED_FIELDS if name not in config]
    if missing:
        raise ValueError(f"config lacks field(s) {', '.join(missing)}: expected every field of configs/default.py")

    if config.model not in model_names():
        raise ValueError(f"config.model={config.model!r} is unknown: known models are {', '.join(model_names())}")
    if config.dataset not in data.known_datasets():
        raise ValueError(f"config.dataset={config.dataset!r} is unknown: known datasets are "
                         f"{', '.join(data.known_datasets())}")
    if config.method not in method_names():
        raise ValueError(f"config.method={config.method!r} is invalid: expected one of {', '.join(method_names())}")
    if config.parallel not in PARALLEL_KINDS:
        raise ValueError(f"config.parallel={config.parallel!r} is invalid: expected one of {', '.join(PARALLEL_KINDS)}")

    try:
        MaskConfig(**dict(config.mask))
    except TypeError as e:
        raise ValueError(f"config.mask={dict(config.mask)!r} is invalid: expected exactly eps, delta, k, tau") from e
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    if not _is_number(config.sparsity_lambda) or config.sparsity_lambda < 0:
        raise ValueError(f"config.sparsity_lambda={config.sparsity_lambda!r} is invalid: expected a number >= 0")
    if not _is_number(config.sparsity_s) or config.sparsity_s < 0:
        raise ValueError(f"config.sparsity_s={config.sparsity_s!r} is invalid: expected a number >= 0")
    if not _is_number(config.slimming.l1) or config.slimming.l1 < 0:
        raise ValueError(f"config.slimming.l1={config.slimming.l1!r} is invalid: expected a number >= 0")
    _number_in("slimming.target_channel_ratio", config.slimming.target_channel_ratio, 0.0, 1.0, low_open=True)
    if config.slimming.get("target_macs_ratio") is not None:
        _number_in("slimming.target_macs_ratio", config.slimming.target_macs_ratio, 0.0, 1.0, low_open=True)

    batch_size = _int_at_least(config, "batch_size", 1)
    eval_batch_size = _int_at_least(config, "eval_batch_size", 1)
    num_epochs = _int_at_least(config, "num_epochs", 1)
    _int_at_least(config, "finetune_epochs", 0)
    for name in ("learning_rate", "finetune_learning_rate"):
        _number_in(name, config[name], 0.0, math.inf, low_open=True, high_open=True)
    _number_in("lr_decay", config.lr_decay, 0.0, 1.0, low_open=True)
    _number_in("momentum", config.momentum, 0.0, 1.0, high_open=True)
    _number_in("weight_decay", config.weight_decay, 0.0, math.inf, high_open=True)
    if not isinstance(config.nesterov, bool):
        raise ValueError(f"config.nesterov={config.nesterov!r} is invalid: expected True or False")
    boundaries = tuple(config.lr_boundaries)
    if (not all(_is_number(b) and 0 < b <= num_epochs for b in boundaries)
            or list(boundaries) != sorted(boundaries)):
        raise ValueError(f"config.lr_boundaries={boundaries!r} is invalid: expected increasing epochs in "
                         f"(0, num_epochs={num_epochs}]")

    _int_at_least(config, "round_to", 1)
    _int_at_least(config, "checkpoint_every_epochs", 1)
    _int_at_least(config, "keep_checkpoints", 1)
    _int_at_least(config, "log_every_steps", 1)
    _int_at_least(config, "seed", 0)
    _int_at_least(config, "benchmark_runs", 1)
    sizes = tuple(config.benchmark_batch_sizes)
    if not sizes or not all(_is_int(b) and b >= 1 for b in sizes):
        raise ValueError(f"config.benchmark_batch_sizes={sizes!r} is invalid: expected a non-empty tuple of ints >= 1")

    if num_devices is None:
        import jax
        num_devices = jax.device_count()
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value % num_devices:
            raise ValueError(f"config.{name}={value} is not divisible by the {num_devices} devices: "
                             f"expected a multiple of {num_devices}")

    dist = config.distributed
    distributed.validate_fields(dist.get("coordinator_address"), dist.get("num_processes"), dist.get("process_id"))

    data.validate_config(config)  # dataset, num_classes, example counts, ImageNet's manual_dir
