"""Any tfds image-classification dataset by name (``--config.dataset=oxford_flowers102``) as a ``DatasetSpec``.

Classes, image shape and split sizes come from the builder's info (the data is prepared first, as for
the known datasets); ``config.train_split`` / ``config.test_split`` take tfds's slicing syntax
('train[:90%]'); the per-channel mean / std are computed once from the train split and cached beside
the prepared data (``channel_stats.STATS_FILE``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
from typing import Any

from soft_prune_jax.training.data import channel_stats, image_defaults
from soft_prune_jax.training.data.errors import first_line
from soft_prune_jax.training.data.spec import DatasetSpec, known_datasets
from soft_prune_jax.training.data.splits import slice_string
from soft_prune_jax.training.data.tf_runtime import import_tensorflow
from soft_prune_jax.training.data.tfds_builders import prepare_builder, tfds_data_dir, tfds_examples


def _tfds_builder(name: str, data_dir: str):
    """The (unprepared) builder of a tfds name; an unknown name lists the closest registered ones."""
    _, tfds = import_tensorflow()
    base = name.split(":")[0].split("/")[0]
    registered = tfds.list_builders()
    if base not in registered:
        names = list(dict.fromkeys(known_datasets() + list(registered)))
        # Close spellings, then longer names that start with it ('svhn' -> svhn_cropped).
        close = difflib.get_close_matches(base, names, n=4, cutoff=0.6)
        close = list(dict.fromkeys(close + sorted(n for n in names if n.startswith(base))))[:4]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"config.dataset={name!r} is unknown: {hint}expected a known dataset, a tfds image-classification "
            "name (tfds.list_builders()), 'folder:PATH' or 'package.module:attribute'"
        )
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # an unknown config or version of a registered dataset
        raise ValueError(f"config.dataset={name!r} cannot be loaded by tfds: {first_line(e)}") from None


def _classification_keys(name: str, info) -> tuple[str, str]:
    """(image feature, label feature) of an image-classification dataset, else a one-line error."""
    _, tfds = import_tensorflow()
    features = info.features
    keys = tuple(info.supervised_keys or ()) if isinstance(info.supervised_keys, tuple) else ()
    image_key, label_key = keys if len(keys) == 2 and all(isinstance(k, str) for k in keys) else ("image", "label")
    image = features[image_key] if image_key in features else None  # noqa: SIM401 - FeaturesDict has no get()
    label = features[label_key] if label_key in features else None  # noqa: SIM401
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(
            f"config.dataset={name!r} is not an image-classification dataset: expected an Image feature "
            f"and a ClassLabel label, it has {', '.join(f'{k}: {type(v).__name__}' for k, v in features.items())}"
        )
    if image.shape[-1] is None:
        raise ValueError(f"config.dataset={name!r} does not fix its images' channel count: expected 1 or 3")
    return image_key, label_key


def _split_lengths(builder, names) -> dict[str, Any]:
    """{split: object with .num_examples}; counted by reading where the info knows no sizes (tfds mocks)."""
    known = dict(builder.info.splits.items())
    if known:
        return known
    count = lambda split: int(builder.as_dataset(split=split).reduce(0, lambda c, _: c + 1))  # noqa: E731
    return {n: types.SimpleNamespace(num_examples=count(n)) for n in names}


def _pieces(builder, dataset: str, field: str, split: str) -> tuple[tuple[str, int, int], ...]:
    """config.<field> in tfds's slicing syntax -> absolute (split, start, end) pieces; bad ones are one line."""
    _, tfds = import_tensorflow()
    try:
        instruction = tfds.core.ReadInstruction.from_spec(split)
        names = {piece.split("[")[0].strip() for piece in split.split("+")}
        absolute = instruction.to_absolute(_split_lengths(builder, names))
    except Exception as e:  # tfds's parse errors span several lines
        available = ", ".join(builder.info.splits.keys()) or "unknown until prepared"
        raise ValueError(
            f"config.{field}={split!r} is invalid for {dataset}: {first_line(e)} (its splits: {available}; "
            "expected tfds slicing syntax such as 'train[:90%]')"
        ) from None
    lengths = _split_lengths(builder, {a.splitname for a in absolute})
    pieces = []
    for a in absolute:
        end = lengths[a.splitname].num_examples if a.to is None else a.to
        if (a.from_ or 0) < end:
            pieces.append((a.splitname, a.from_ or 0, end))
    if not pieces:
        raise ValueError(f"config.{field}={split!r} selects no examples of {dataset}: expected a non-empty split")
    return tuple(pieces)


def _default_test_split(name: str, builder) -> str:
    splits = list(builder.info.splits.keys())
    if not splits or "test" in splits:  # tfds mocks know no splits: 'test', as for the known datasets
        return "test"
    if "validation" in splits:
        return "validation"
    raise ValueError(
        f"config.test_split is not set and {name} has no test or validation split (its splits: "
        f"{', '.join(splits)}): expected e.g. --config.train_split='train[:90%]' --config.test_split='train[90%:]'"
    )


def tfds_spec(config) -> DatasetSpec:
    """The spec of the tfds dataset config.dataset names (prepared first); one-line ValueErrors."""
    name, data_dir = config.dataset, tfds_data_dir(config)
    image_key, label_key = _classification_keys(name, _tfds_builder(name, data_dir).info)
    builder = prepare_builder(config, name)
    train_split = config.get("train_split") or "train"
    train = _pieces(builder, name, "train_split", train_split)
    test = _pieces(builder, name, "test_split", config.get("test_split") or _default_test_split(name, builder))
    feature = builder.info.features[image_key]
    stored = tuple(feature.shape)
    height, width = image_defaults.input_size(config, stored, name)
    augmentation, pad = image_defaults.augmentation(config, (height, width))
    train_size = sum(end - start for _, start, end in train)
    spec = DatasetSpec(
        tfds_name=name,
        num_classes=builder.info.features[label_key].num_classes,
        input_shape=(height, width, int(stored[-1])),
        train_size=train_size,
        test_size=sum(end - start for _, start, end in test),
        tfds_test_split=test[0][0],
        mean=(0.0,),
        std=(1.0,),
        shuffle_buffer=min(train_size, 10_000),
        in_memory=image_defaults.in_memory(stored, train_size),
        augmentation=augmentation,
        pad=pad,
        train_pieces=train,
        test_pieces=test,
        image_key=image_key,
        label_key=label_key,
        raw_shape=stored,
    )
    path = os.path.join(data_dir, builder.info.full_name, channel_stats.STATS_FILE)  # beside the prepared records

    def compute():
        split = slice_string(train, 0, train_size)
        examples = tfds_examples(builder, spec, split, min(train_size, channel_stats.STATS_EXAMPLES))
        return channel_stats.mean_std(examples)

    mean, std = channel_stats.cached(path, train_split, compute, spec.input_shape[-1])
    return _check_classes(config, dataclasses.replace(spec, mean=mean, std=std))


def _check_classes(config, spec: DatasetSpec) -> DatasetSpec:
    if spec.num_classes < 2:
        raise ValueError(f"config.dataset={config.dataset!r} has {spec.num_classes} class: expected at least 2")
    return spec
