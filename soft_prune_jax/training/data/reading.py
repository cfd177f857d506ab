"""The raw examples of this process's range of a split: tfds slices or a folder's files, small datasets
decoded once and kept in memory (permuted in numpy for training), large ones streamed from disk."""

from __future__ import annotations

import numpy as np

from soft_prune_jax.training.data.errors import unusable_data
from soft_prune_jax.training.data.folder_source import folder_examples
from soft_prune_jax.training.data.sharding import process_slice
from soft_prune_jax.training.data.spec import DatasetSpec
from soft_prune_jax.training.data.splits import slice_string, split_range
from soft_prune_jax.training.data.tf_runtime import import_tensorflow
from soft_prune_jax.training.data.tfds_builders import prepare_dataset, tfds_data_dir, tfds_examples


def read(config, spec: DatasetSpec, split: str, process_index: int, process_count: int, *, train: bool, seed: int):
    """Raw examples of this process's range of ``split`` (images still uint8, or JPEG for ImageNet train)."""
    tf, tfds = import_tensorflow()
    which, start, end = split_range(config, spec, split)
    offset, stop = process_slice(end - start, process_index, process_count)
    first, last, count = start + offset, start + stop, stop - offset
    if spec.kind == "folder":
        key = (spec, which, first, last)
        make = lambda: folder_examples(spec, which, first, last)  # noqa: E731
    else:
        builder = prepare_dataset(config)
        split_slice = slice_string(spec.pieces(which), first, last)
        key = (spec, tfds_data_dir(config), split_slice)
        make = lambda **kwargs: tfds_examples(builder, spec, split_slice, count, **kwargs)  # noqa: E731
    if spec.in_memory:
        examples = _read_in_memory(config, spec, key, make, count)
        if train:  # a permutation in numpy: see iterators.train_iterator
            order = np.random.default_rng(seed).permutation(count)
            examples = {k: v[order] for k, v in examples.items()}
        return tf.data.Dataset.from_tensor_slices(examples), count
    if spec.kind == "folder":
        return make(), count
    decoders = None
    if train and spec.tfds_name == "imagenet2012":
        # Decode only the random crop (decode_and_crop_jpeg), not the whole JPEG.
        decoders = {"image": tfds.decode.SkipDecoding()}
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    return make(shuffle_files=train, decoders=decoders, read_config=read_config), count


# Decoded small splits, kept for the life of the process: the trainer opens a fresh iterator every
# epoch, and decoding 60,000 PNGs again each time costs ~8 s on 2 cores (CIFAR-10 train: 150 MB).
_IN_MEMORY: dict[tuple, dict[str, np.ndarray]] = {}


def _read_in_memory(config, spec: DatasetSpec, key: tuple, make, count: int) -> dict[str, np.ndarray]:
    if key not in _IN_MEMORY:
        _, tfds = import_tensorflow()
        examples = {"image": np.zeros((0, *spec.stored_shape()), np.uint8), "label": np.zeros((0,), np.int32)}
        if count:
            try:
                whole = next(iter(tfds.as_numpy(make().batch(count))))
            except Exception as e:  # truncated or damaged record files
                raise unusable_data(spec.source or spec.tfds_name, tfds_data_dir(config), e) from e
            examples = {"image": whole["image"], "label": whole["label"].astype(np.int32)}
        _IN_MEMORY[key] = examples
    return _IN_MEMORY[key]
