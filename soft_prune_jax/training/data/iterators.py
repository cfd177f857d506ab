"""The pipeline's entry points: ``train_iterator`` and ``eval_iterator``, numpy batches laid out for
pmap / shard_map.

Every batch is a dict ``{'image': float32 (local_devices, per_device_batch, H, W, C),
'label': int32 (local_devices, per_device_batch)}``; evaluation batches add ``'mask'`` (float32,
0 for the padding examples that fill up the last batch). tfds and folder datasets are read
(``reading``), preprocessed (``preprocessing``) and batched by tf.data; a user pipeline's batches are
re-cut by ``factory_source.factory_batches``.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from soft_prune_jax.training.data.factory_source import factory_batches
from soft_prune_jax.training.data.preprocessing import eval_image, normalize, train_image
from soft_prune_jax.training.data.reading import read
from soft_prune_jax.training.data.resolve import dataset_spec
from soft_prune_jax.training.data.sharding import device_count, per_device_batch_size, process_layout
from soft_prune_jax.training.data.splits import split_range
from soft_prune_jax.training.data.tf_runtime import (
    PREFETCH_BATCHES,
    import_tensorflow,
    parallel_calls,
    with_fixed_options,
)


def _to_devices(batch, local_devices: int):
    """(per_process_batch, ...) -> (local_devices, per_device_batch, ...), the pmap layout."""
    import tensorflow as tf

    return {k: tf.reshape(v, tf.concat([[local_devices, -1], tf.shape(v)[1:]], 0)) for k, v in batch.items()}


def train_iterator(
    config,
    *,
    local_devices: Union[int, Sequence[Any]],
    seed: int,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite, shuffled, augmented numpy batches of this process's share of the train split.

    Deterministic given ``seed`` (and the process index). ``config.augment`` (default True) turns
    the augmentation off (ImageNet always uses random-resized-crop). A user pipeline's batches are
    re-cut to this process's share of the global batch (factory_source.factory_batches).
    """
    spec = dataset_spec(config)
    devices = device_count(local_devices)
    process_index, process_count = process_layout(process_index, process_count)
    per_device = per_device_batch_size(config.batch_size, devices, process_count)
    if spec.kind == "factory":
        return factory_batches(spec, config, "train", devices, per_device, process_index, process_count)
    tf, tfds = import_tensorflow()
    process_seed = int(seed) * 7919 + process_index  # distinct, reproducible stream per process
    ds, count = read(config, spec, "train", process_index, process_count, train=True, seed=process_seed)
    if count < per_device * devices:
        raise ValueError(
            f"this process holds {count} train examples, fewer than its batch of "
            f"{per_device * devices}: lower config.batch_size or raise num_train_examples"
        )
    # Every epoch is a permutation, fixed by the seed (the loop opens a fresh iterator per epoch). Small
    # data sets held in memory are permuted in numpy by reading.read, which is instant, where a tf.data shuffle
    # buffer of the whole split would be filled element by element at every epoch's start.
    if not spec.in_memory:
        ds = ds.shuffle(min(spec.shuffle_buffer, count), seed=process_seed, reshuffle_each_iteration=True)
    ds = ds.repeat()
    augment = bool(config.get("augment", True))

    def preprocess(index, example):
        example_seed = tf.stack([tf.constant(process_seed, tf.int64), index])
        image = train_image(example["image"], example_seed, spec, augment)
        return {"image": normalize(image, spec), "label": example["label"]}

    ds = ds.enumerate().map(preprocess, num_parallel_calls=parallel_calls())
    ds = ds.batch(per_device * devices, drop_remainder=True).map(lambda b: _to_devices(b, devices))
    return iter(tfds.as_numpy(with_fixed_options(ds).prefetch(PREFETCH_BATCHES)))


def eval_iterator(
    config,
    *,
    local_devices: Union[int, Sequence[Any]],
    split: str = "test",
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Finite numpy batches of this process's share of ``split`` ('test', 'validation' or 'train').

    The last batch is padded with zero images whose ``mask`` is 0, and every process yields the
    same number of batches (a process with fewer examples adds all-padding batches), so a
    cross-process pmap never waits on a process that has run out.
    """
    spec = dataset_spec(config)
    devices = device_count(local_devices)
    process_index, process_count = process_layout(process_index, process_count)
    per_device = per_device_batch_size(config.eval_batch_size, devices, process_count)
    batch = per_device * devices
    _, start, end = split_range(config, spec, split)
    if spec.kind == "factory":
        return factory_batches(spec, config, split, devices, per_device, process_index, process_count)
    tf, tfds = import_tensorflow()
    largest_share = math.ceil((end - start) / process_count)
    num_batches = math.ceil(largest_share / batch)
    ds, count = read(config, spec, split, process_index, process_count, train=False, seed=0)

    def preprocess(example):
        image = normalize(eval_image(example["image"], spec), spec)
        return {"image": image, "label": example["label"], "mask": tf.constant(1.0, tf.float32)}

    def pad_batch(examples):
        missing = batch - tf.shape(examples["label"])[0]
        return {
            k: tf.ensure_shape(tf.pad(v, [[0, missing]] + [[0, 0]] * (len(v.shape) - 1)), [batch, *v.shape[1:]])
            for k, v in examples.items()
        }

    ds = ds.map(preprocess, num_parallel_calls=parallel_calls()).batch(batch).map(pad_batch)
    padding_batches = num_batches - math.ceil(count / batch)
    if padding_batches:
        empty = {
            "image": tf.zeros((batch, *spec.input_shape), tf.float32),
            "label": tf.zeros((batch,), tf.int32),
            "mask": tf.zeros((batch,), tf.float32),
        }
        ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat(padding_batches))
    ds = ds.map(lambda b: _to_devices(b, devices))
    return iter(tfds.as_numpy(with_fixed_options(ds).prefetch(PREFETCH_BATCHES)))
