"""A user's own pipeline (``--config.dataset=my_package.my_data:pipeline``) as a ``DatasetSpec``, and its
batches re-cut into the layout of ``iterators.train_iterator`` / ``eval_iterator``.

A factory ``f(config)`` (or ``f()``) returns ``(train, eval, num_classes)``: two re-iterable iterables
(a list, a tf.data.Dataset through tfds.as_numpy, a grain DataLoader, a class with ``__iter__``) of
``{'image': (N, H, W, C), 'label': (N,)}`` numpy batches of any size N, images already preprocessed
(they are only cast to float32). Each epoch iterates ``train`` afresh; its batches are re-cut into the
global ``config.batch_size``, and each process keeps its share of every global batch, so every
process must see the same stream. An epoch has ``config.num_train_examples`` examples, or one pass
of ``train`` (counted once, when the spec is resolved).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import logging
import os
import sys
from typing import Any, Iterator

import numpy as np

from soft_prune_jax.training.data.errors import first_line
from soft_prune_jax.training.data.spec import DatasetSpec

_FACTORIES: dict[str, tuple[Any, Any]] = {}


def _load_factory(ref: str):
    module_name, attr = ref.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `python launch/train.py` puts launch/ first, not the working directory
    try:
        target = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module: one line naming it
        raise ValueError(
            f"config.dataset={ref!r}: cannot import {module_name!r} ({type(e).__name__}: {first_line(e)}): "
            "expected a module in the working directory or on PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(
                f"config.dataset={ref!r}: module {module_name!r} has no attribute {attr!r}: expected a factory"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"config.dataset={ref!r}: {attr!r} is a {type(target).__name__}, expected a factory")
    return target


def _call_factory(ref: str, factory, config):
    try:
        takes_config = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_config = True
    try:
        return factory(config) if takes_config else factory()
    except Exception as e:  # noqa: BLE001 - the user's code: one line naming it
        raise ValueError(
            f"config.dataset={ref!r}: the factory raised {type(e).__name__}: {first_line(e)}; expected "
            "(train, eval, num_classes)"
        ) from None


def _check_batch(ref: str, batch, where: str, shape=None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, H, W, C), labels int32 (N,)) of a user batch, else a one-line error naming it."""
    expected = "expected a dict {'image': (N, H, W, C), 'label': (N,) ints}"
    expected += f" with (H, W, C) = {tuple(shape)}" if shape else ""
    if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"config.dataset={ref!r}: {where} is {got}: {expected}")
    images, labels = np.asarray(batch["image"]), np.asarray(batch["label"])
    ok = (
        images.ndim == 4
        and labels.shape == images.shape[:1]
        and np.issubdtype(labels.dtype, np.integer)
        and (shape is None or images.shape[1:] == tuple(shape))
    )
    if not ok:
        raise ValueError(
            f"config.dataset={ref!r}: {where} has image {images.shape} and label {labels.shape} "
            f"{labels.dtype}: {expected}"
        )
    return images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def _factory_parts(ref: str, result):
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        got = f"a {type(result).__name__}" + (f" of {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise ValueError(f"config.dataset={ref!r}: the factory returned {got}: expected (train, eval, num_classes)")
    train, evaluation, classes = result
    for name, part in (("train", train), ("eval", evaluation)):
        if not hasattr(part, "__iter__") or iter(part) is part:
            raise ValueError(
                f"config.dataset={ref!r}: the factory's {name} is a {type(part).__name__}: expected a re-iterable "
                "(a list, a tf.data.Dataset, a class with __iter__), not a one-shot iterator or generator"
            )
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
        raise ValueError(f"config.dataset={ref!r}: the factory's num_classes={classes!r}: expected an int >= 2")
    return train, evaluation, int(classes)


def _count(ref: str, iterable, what: str, shape) -> int:
    return sum(len(_check_batch(ref, b, f"{what} batch {i}", shape)[1]) for i, b in enumerate(iterable))


def factory_spec(config) -> DatasetSpec:
    """The spec of the factory config.dataset names (called once, its batches checked); one-line errors."""
    ref = config.dataset
    train, evaluation, classes = _factory_parts(ref, _call_factory(ref, _load_factory(ref), config))
    first = next(iter(train), None)
    if first is None:
        raise ValueError(f"config.dataset={ref!r}: the factory's train yields no batches: expected at least one")
    images, _ = _check_batch(ref, first, "train batch 0")
    shape = tuple(int(d) for d in images.shape[1:])
    num_train = config.get("num_train_examples")
    if num_train is None:
        logging.info("%s: counting one pass of train (set config.num_train_examples to skip)", ref)
        num_train = _count(ref, train, "train", shape)
    _FACTORIES[ref] = (train, evaluation)
    return DatasetSpec(
        tfds_name=ref,
        num_classes=classes,
        input_shape=shape,
        train_size=int(num_train),
        test_size=_count(ref, evaluation, "eval", shape),
        tfds_test_split="test",
        mean=(0.0,) * shape[-1],
        std=(1.0,) * shape[-1],
        shuffle_buffer=0,
        in_memory=False,
        augmentation="none",
        kind="factory",
        source=ref,
    )


def _rows(ref: str, iterable, what: str, shape, *, repeat: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The batches of ``iterable`` checked and cast; with ``repeat``, pass after pass."""
    for epoch in itertools.count() if repeat else (0,):
        served = 0
        for i, batch in enumerate(iterable):
            served += 1
            yield _check_batch(ref, batch, f"{what} batch {i}", shape)
        if not served:
            raise ValueError(
                f"config.dataset={ref!r}: {what} yielded no batches on pass {epoch + 1}: expected a re-iterable"
            )


def _rebatch(rows, size: int, *, pad: bool) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Batches of exactly ``size`` rows (images, labels, real rows); the rest padded with zeros, or dropped."""
    images, labels, held = [], [], 0
    for x, y in rows:
        images.append(x)
        labels.append(y)
        held += len(y)
        while held >= size:
            x_all, y_all = np.concatenate(images), np.concatenate(labels)
            yield x_all[:size], y_all[:size], size
            images, labels, held = [x_all[size:]], [y_all[size:]], held - size
    if pad and held:
        x_all, y_all = np.concatenate(images), np.concatenate(labels)
        missing = size - held
        yield (
            np.concatenate([x_all, np.zeros((missing, *x_all.shape[1:]), np.float32)]),
            np.concatenate([y_all, np.zeros(missing, np.int32)]),
            held,
        )


def factory_batches(spec, config, split: str, devices: int, per_device: int, process_index: int, process_count: int):
    """A user pipeline's batches in the layout of data.train_iterator / eval_iterator.

    The stream is re-cut into global batches (per_device x devices x processes rows) and this process
    keeps its contiguous share of each; evaluation batches carry 'mask' (0 for padding rows).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not available from a user pipeline: expected 'train' or 'test'")
    train, evaluation = _FACTORIES[spec.source]
    per_process = per_device * devices
    size = per_process * process_count
    share = slice(process_index * per_process, (process_index + 1) * per_process)
    layout = (devices, per_device)
    if split == "train":
        rows = _rows(spec.source, train, "train", spec.input_shape, repeat=True)
        return (
            {"image": x[share].reshape(layout + x.shape[1:]), "label": y[share].reshape(layout)}
            for x, y, _ in _rebatch(rows, size, pad=False)
        )
    limit = config.get("num_eval_examples") or spec.test_size
    rows = _limit(_rows(spec.source, evaluation, "eval", spec.input_shape, repeat=False), limit)
    return (
        {
            "image": x[share].reshape(layout + x.shape[1:]),
            "label": y[share].reshape(layout),
            "mask": (np.arange(size) < real).astype(np.float32)[share].reshape(layout),
        }
        for x, y, real in _rebatch(rows, size, pad=True)
    )


def _limit(rows, limit: int):
    """The first ``limit`` rows of a stream of (images, labels) batches."""
    for x, y in rows:
        if limit <= 0:
            return
        yield x[:limit], y[:limit]
        limit -= len(y)
