"""Checks an experiment config before any compute: every failure is one line naming the bad value.

Each field of the schema (configs/default.py declares and documents them) is checked in exactly one
place: here, or where this module delegates -- the mask hyper-parameters in ``masks.MaskConfig``,
the dataset in ``data.dataset_spec`` (tfds names, folders, pipelines: the data package), the multi-host
fields in ``distributed.validate_fields``.
The data pipeline and the trainer trust a validated config and do not check its fields again.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real
from typing import Optional

import jax

from soft_prune_jax.models import is_builtin, model_names, user
from soft_prune_jax.pruners import method_names
from soft_prune_jax.scp.latency_model import LATENCY
from soft_prune_jax.scp.masks import MaskConfig
from soft_prune_jax.training import cpu_devices, data, distributed
from soft_prune_jax.training.parallel import PARALLEL_KINDS, check_global_batch


def _get(config, name: str):
    """The value of the dotted field ``name``; a missing one is a one-line error."""
    node = config
    for part in name.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise ValueError(f"config lacks field {name}: expected every field of configs/default.py")
        node = node[part]
    return node


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(config, name: str, low: int, *, optional: bool = False) -> Optional[int]:
    value = _get(config, name)
    if optional and value is None:
        return None
    if not _is_int(value) or value < low:
        raise ValueError(
            f"config.{name}={value!r} is invalid: expected an int >= {low}" + (" or None" if optional else "")
        )
    return int(value)


def _number_in(
    config,
    name: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    value = _get(config, name)
    if optional and value is None:
        return
    ok = (
        _is_number(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(
            f"config.{name}={value!r} is invalid: expected a number in {interval}" + (" or None" if optional else "")
        )


def _one_of(config, name: str, known) -> None:
    value = _get(config, name)
    if value not in known:
        raise ValueError(f"config.{name}={value!r} is invalid: expected one of {', '.join(known)}")


def _non_negative(config, name: str) -> None:
    value = _get(config, name)
    if not _is_number(value) or value < 0:
        raise ValueError(f"config.{name}={value!r} is invalid: expected a number >= 0")


def _bool(config, name: str) -> None:
    value = _get(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"config.{name}={value!r} is invalid: expected True or False")


def validate(config, *, num_devices: Optional[int] = None) -> None:
    """Raises ValueError on the first invalid field. ``num_devices`` defaults to ``jax.device_count()``."""
    _validate_data(config)  # first: a user model is checked on the data's input shape
    _validate_model(config)
    _validate_optimisation(config, jax.device_count() if num_devices is None else num_devices)
    _validate_method(config)
    _validate_budget(config)
    _validate_running(config)


def _validate_model(config) -> None:
    """A built-in name or a user's model spec: buildable, a Flax module, callable on the dataset's images
    (abstractly, no compute). Both take one road from here on."""
    user.parse_call(_get(config, "model_call"))
    name = _get(config, "model")
    if not is_builtin(name) and not user.is_user_model(name):
        raise ValueError(
            f"config.model={name!r} is unknown: expected a built-in name ({', '.join(model_names())}) "
            "or a user model 'package.module:attribute'"
        )
    _validate_user_model(config)


def _validate_user_model(config) -> None:
    kwargs = _get(config, "model_kwargs")
    if not hasattr(kwargs, "keys"):
        raise ValueError(f"config.model_kwargs={kwargs!r} is invalid: expected a dict of constructor arguments")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(kwargs).items()}
    model = user.build(
        config.model, data.num_classes(config), kwargs, call=config.model_call, seed=int(_get(config, "seed"))
    )
    user.check_callable(model, data.dataset_spec(config).input_shape)


def _validate_source_fields(config) -> None:
    """The fields of tfds-by-name and folder datasets: types and ranges, and unset where they do not apply."""
    name = _get(config, "dataset")
    if not isinstance(name, str) or not name:
        data.dataset_spec(name)  # the one-line error listing what is accepted
    for field in ("train_split", "test_split"):
        value = _get(config, field)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"config.{field}={value!r} is invalid: expected tfds slicing syntax such as 'train[:90%]'")
    _int_at_least(config, "image_size", 1, optional=True)
    if _get(config, "augmentation") is not None:
        _one_of(config, "augmentation", data.AUGMENTATIONS)
    _number_in(config, "folder_test_fraction", 0.0, 1.0, low_open=True, high_open=True, optional=True)
    kind = data.kind_of(name)
    unused = {"known": data.SOURCE_FIELDS, "factory": data.SOURCE_FIELDS, "folder": ("train_split", "test_split")}
    for field in unused.get(kind, ()):
        if config[field] is not None:
            what = {"known": "the known dataset", "factory": "a user pipeline", "folder": "a folder dataset"}[kind]
            raise ValueError(
                f"config.{field}={config[field]!r} does not apply to {what} {name!r}: expected None"
                + (" (it keeps its published recipe)" if kind == "known" else "")
            )


def _validate_data(config) -> None:
    _validate_source_fields(config)
    spec = data.dataset_spec(config)
    name = config.dataset
    classes = _get(config, "num_classes")
    if classes is not None and (not _is_int(classes) or classes != spec.num_classes):
        raise ValueError(
            f"config.num_classes={classes!r} does not match dataset {name!r}: expected "
            f"{spec.num_classes} or None (derived from the dataset)"
        )
    for field in ("data_dir", "manual_dir"):
        value = _get(config, field)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"config.{field}={value!r} is invalid: expected a path string or None")
    _bool(config, "augment")
    validation = _int_at_least(config, "validation_examples", 0)
    if validation and spec.kind == "factory":
        raise ValueError(
            f"config.validation_examples={validation} is invalid with a user pipeline ({name!r}): expected 0 "
            "(the pipeline has no validation split)"
        )
    if validation >= spec.train_size:
        raise ValueError(
            f"config.validation_examples={validation} is invalid: expected 0 <= n < "
            f"{spec.train_size} (the {name} train split)"
        )
    num_train = _int_at_least(config, "num_train_examples", 1, optional=True)
    if num_train is not None and num_train > spec.train_size - validation:
        raise ValueError(
            f"config.num_train_examples={num_train} is invalid: expected at most "
            f"{spec.train_size - validation} ({name} train minus validation_examples) or None"
        )
    num_eval = _int_at_least(config, "num_eval_examples", 1, optional=True)
    if num_eval is not None and num_eval > spec.test_size:
        raise ValueError(
            f"config.num_eval_examples={num_eval} is invalid: expected at most "
            f"{spec.test_size} (the {name} test split) or None"
        )
    if name == "imagenet2012":
        _validate_imagenet_manual_dir(config)


def _validate_imagenet_manual_dir(config) -> None:
    """ImageNet cannot be downloaded: preparing it needs the two ILSVRC2012 tars in manual_dir."""
    manual_dir, tfds_dir = config.manual_dir, data.tfds_data_dir(config)
    tars = " and ".join(data.IMAGENET_MANUAL_FILES)
    if manual_dir is None:
        if data.is_prepared_on_disk("imagenet2012", tfds_dir):
            return
        raise ValueError(
            f"config.manual_dir is not set and imagenet2012 is not prepared in {tfds_dir!r}: set "
            f"--config.manual_dir to a directory holding {tars}"
        )
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
        raise ValueError(f"config.manual_dir={manual_dir!r} is missing or empty: expected a directory holding {tars}")
    missing = [f for f in data.IMAGENET_MANUAL_FILES if not os.path.exists(os.path.join(manual_dir, f))]
    if missing and not data.is_prepared_on_disk("imagenet2012", tfds_dir):
        raise ValueError(
            f"config.manual_dir={manual_dir!r} lacks {', '.join(missing)}: expected {tars} (the ILSVRC2012 downloads)"
        )


def _validate_optimisation(config, num_devices: int) -> None:
    for name in ("batch_size", "eval_batch_size"):
        # The split over devices is the trainer's own rule (it checks the real device layout again).
        check_global_batch(_int_at_least(config, name, 1), num_devices, what=f"config.{name}")
    num_epochs = _int_at_least(config, "num_epochs", 1)
    _number_in(config, "learning_rate", 0.0, math.inf, low_open=True, high_open=True)
    boundaries = _get(config, "lr_boundaries")
    if (
        not isinstance(boundaries, (tuple, list))
        or not all(_is_number(b) and 0 < b <= num_epochs for b in boundaries)
        or list(boundaries) != sorted(boundaries)
    ):
        raise ValueError(
            f"config.lr_boundaries={boundaries!r} is invalid: expected increasing epochs in "
            f"(0, num_epochs={num_epochs}]"
        )
    _number_in(config, "lr_decay", 0.0, 1.0, low_open=True)
    _number_in(config, "momentum", 0.0, 1.0, high_open=True)
    _bool(config, "nesterov")
    _non_negative(config, "weight_decay")


def _validate_method(config) -> None:
    _one_of(config, "method", method_names())
    mask = _get(config, "mask")
    try:
        MaskConfig(**dict(mask))
    except TypeError as e:
        raise ValueError(f"config.mask={dict(mask)!r} is invalid: expected exactly eps, delta, k, tau") from e
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    _non_negative(config, "sparsity_lambda")
    _non_negative(config, "sparsity_s")
    _non_negative(config, "slimming.l1")
    _number_in(config, "slimming.scale_init", 0.0, math.inf, low_open=True, high_open=True)
    _number_in(config, "slimming.target_channel_ratio", 0.0, 1.0, low_open=True)
    _number_in(config, "slimming.target_macs_ratio", 0.0, 1.0, low_open=True, optional=True)
    _int_at_least(config, "finetune_epochs", 0)
    _number_in(config, "finetune_learning_rate", 0.0, math.inf, low_open=True, high_open=True)
    round_to = _get(config, "round_to")
    if round_to != LATENCY and (not _is_int(round_to) or round_to < 1):
        raise ValueError(
            f"config.round_to={round_to!r} is invalid: expected an int >= 1 (1 = no alignment) or {LATENCY!r}"
        )


def _validate_budget(config) -> None:
    """SCP at a MAC budget and the cost-aware penalty (soft_prune_jax/scp/cost.py): SCP's options only."""
    _number_in(config, "target_macs_ratio", 0.0, 1.0, low_open=True, high_open=True, optional=True)
    if "target_latency_ratio" in config:  # a config recorded before latency budgets has neither field
        _number_in(config, "target_latency_ratio", 0.0, 1.0, low_open=True, optional=True)
    if "target_latency_ms" in config:
        _number_in(config, "target_latency_ms", 0.0, math.inf, low_open=True, high_open=True, optional=True)
    budgets = ("target_macs_ratio", "target_latency_ratio", "target_latency_ms")
    targets = [f for f in budgets if config.get(f) is not None]
    if len(targets) > 1:
        raise ValueError(
            f"config.{targets[0]}={config[targets[0]]!r} and config.{targets[1]}={config[targets[1]]!r} are both set: "
            "expected one budget (MACs or latency; configs/fashion_mnist.py:lambda starts without one)"
        )
    _bool(config, "cost_aware_penalty")
    for field in (*targets, "cost_aware_penalty"):
        if _get(config, field) not in (None, False) and config.method != "scp":
            raise ValueError(
                f"config.{field}={config[field]!r} needs config.method='scp', got {config.method!r}: "
                f"expected the default ({'False' if field == 'cost_aware_penalty' else 'None'}) "
                f"for other methods (configs/fashion_mnist.py:lambda has no budget)"
            )
    for name in ("kp", "ki", "ramp_fraction"):
        _number_in(
            config,
            f"budget_controller.{name}",
            0.0,
            1.0 if name == "ramp_fraction" else math.inf,
            high_open=name != "ramp_fraction",
        )
    _number_in(config, "budget_controller.undershoot_boost", 1.0, math.inf, high_open=True)
    # Under a budget, a channel must count as "on its way out" before its hard mask drops it.
    early_q_max = 1.0 - float(config.mask.delta) if _get(config, "target_macs_ratio") is not None else 1.0
    _number_in(config, "budget_controller.early_q", 0.0, early_q_max, low_open=True, high_open=early_q_max == 1.0)
    _number_in(config, "budget_controller.aim_above", 0.0, 1.0, high_open=True)
    _number_in(config, "budget_controller.lambda_min", 0.0, math.inf, low_open=True, high_open=True)
    _number_in(config, "budget_controller.lambda_max", config.budget_controller.lambda_min, math.inf, high_open=True)


def _validate_running(config) -> None:
    _one_of(config, "parallel", PARALLEL_KINDS)
    if config.get("cpu_devices") is not None:  # configs written before the field existed: 'auto'
        cpu_devices.check_setting(config.cpu_devices)
    for name in ("checkpoint_every_epochs", "keep_checkpoints", "log_every_steps", "benchmark_runs"):
        _int_at_least(config, name, 1)
    _int_at_least(config, "seed", 0)
    sizes = _get(config, "benchmark_batch_sizes")
    if not isinstance(sizes, (tuple, list)) or not sizes or not all(_is_int(b) and b >= 1 for b in sizes):
        raise ValueError(f"config.benchmark_batch_sizes={sizes!r} is invalid: expected a non-empty tuple of ints >= 1")
    distributed.validate_fields(
        _get(config, "distributed.coordinator_address"),
        _get(config, "distributed.num_processes"),
        _get(config, "distributed.process_id"),
    )
