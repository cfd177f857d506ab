"""Datasets beyond the four known ones, resolved from ``config.dataset`` into one ``data.DatasetSpec``.

    --config.dataset=oxford_flowers102              any tfds image-classification dataset by name
    --config.dataset=folder:/data/my_images         one sub-folder of images per class
    --config.dataset=my_package.my_data:pipeline    a factory: (train, eval, num_classes)

tfds by name: classes, image shape and split sizes come from the builder's info (the data is prepared
first, as for the known datasets); ``config.train_split`` / ``config.test_split`` take tfds's slicing
syntax ('train[:90%]'); the per-channel mean / std are computed once from the train split and cached
beside the prepared data (``STATS_FILE``).

A folder: ``PATH/CLASS/*.png|jpg|...`` (sub-folders of a class are included), or ``PATH/train/CLASS``
and ``PATH/test/CLASS``; without train/ and test/ a fixed-seed ``config.folder_test_fraction`` of
each class is the test split. Its mean / std are cached under the tfds data_dir.

Both are resized to ``config.image_size`` (None: the images' own size where they all share one, else
224) and augmented by ``config.augmentation``: 'pad_crop_flip' (pad by an eighth of the side, crop
back, flip; the default for images of at most 64 pixels a side) or 'random_resized_crop' (area 8-100%,
aspect 3/4-4/3, then flip; evaluation resizes and centre-crops 87.5%, as ImageNet; the default above).

A factory ``f(config)`` (or ``f()``) returns ``(train, eval, num_classes)``: two re-iterable iterables
(a list, a tf.data.Dataset through tfds.as_numpy, a grain DataLoader, a class with ``__iter__``) of
``{'image': (N, H, W, C), 'label': (N,)}`` numpy batches of any size N, images already preprocessed
(they are only cast to float32). Each epoch iterates ``train`` afresh; its batches are re-cut into the
global ``config.batch_size``, and each process keeps its share of every global batch, so every
process must see the same stream. An epoch has ``config.num_train_examples`` examples, or one pass
of ``train`` (counted once, when the spec is resolved).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import itertools
import json
import logging
import math
import os
import re
import sys
from typing import Any, Iterator

import numpy as np

from soft_prune_jax.training import data

FOLDER_PREFIX = "folder:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
AUGMENTATIONS = ("pad_crop_flip", "random_resized_crop")
SMALL_IMAGE_SIDE = 64  # images up to this side get pad-crop-flip by default, larger ones random-resized-crop
DEFAULT_IMAGE_SIZE = 224  # the input size of images that come in many sizes, unless config.image_size says
STATS_EXAMPLES = 20_000  # mean / std from the first this many train images (within ~1e-3 of the whole set's)
STATS_FILE = "soft_prune_jax_stats.json"
IN_MEMORY_BYTES = 2 << 30  # decoded train images up to this size are held in memory (see data._read_in_memory)
DEFAULT_TEST_FRACTION = 0.2  # config.folder_test_fraction=None
FOLDER_SPLIT_SEED = 0  # fixed, so that every run of a folder is tested on the same images
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
TFDS_VERSION = re.compile(r":(\d+\.\d+\.\d+|\*|\d+\.\d+\.\*|\d+\.\*\.\*)$")  # 'mnist:3.0.1' is tfds, not a factory

# Fields that only tfds and folder datasets use; the known datasets keep their published recipe.
SOURCE_FIELDS = ("train_split", "test_split", "image_size", "augmentation")


def kind_of(name) -> str:
    """'known' | 'folder' | 'factory' | 'tfds' for a config.dataset value (a str)."""
    if name in data.DATASETS:
        return "known"
    if name.startswith(FOLDER_PREFIX):
        return "folder"
    if FACTORY.match(name) and not TFDS_VERSION.search(name):
        return "factory"
    return "tfds"


_SPECS: dict[str, data.DatasetSpec] = {}


def _key(config) -> str:
    fields = ("dataset", "data_dir", *SOURCE_FIELDS, "folder_test_fraction", "num_train_examples")
    return json.dumps([config.get(f) for f in fields], default=str)


def resolve(config) -> data.DatasetSpec:
    """The spec of config.dataset (not a known name), resolved once per process; one-line ValueErrors."""
    name = config.get("dataset")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"config.dataset={name!r} is invalid: expected a known dataset ({', '.join(data.known_datasets())}), "
            "a tfds name, 'folder:PATH' or 'package.module:attribute'"
        )
    key = _key(config)
    if key not in _SPECS:
        kind = kind_of(name)
        resolver = {"folder": _folder_spec, "factory": _factory_spec, "tfds": _tfds_spec}[kind]
        _SPECS[key] = resolver(config)
    return _SPECS[key]


# ----------------------------------------------------------------------------- shared preprocessing choices


def _input_size(config, stored: tuple, what: str) -> tuple[int, int]:
    """(H, W) of the model input: config.image_size squared, else the images' own fixed size, else 224."""
    size = config.get("image_size")
    if size is not None:
        return int(size), int(size)
    if stored[0] is None or stored[1] is None:
        logging.info("%s has images of many sizes: resizing them to %d (config.image_size)", what, DEFAULT_IMAGE_SIZE)
        return DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE
    return int(stored[0]), int(stored[1])


def _augmentation(config, size: tuple[int, int]) -> tuple[str, int]:
    """(augmentation, pad): config.augmentation, else by size: small images pad-crop-flip, larger ones RRC."""
    choice = config.get("augmentation") or ("pad_crop_flip" if max(size) <= SMALL_IMAGE_SIDE else "random_resized_crop")
    return choice, max(1, round(min(size) / 8))  # CIFAR: 32 -> 4


def _in_memory(stored: tuple, count: int) -> bool:
    return None not in stored and count * math.prod(stored) <= IN_MEMORY_BYTES


def _cached_stats(path: str, key: str, compute) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) under ``key`` in the JSON file ``path``, computed and added (atomically) if absent."""
    with data._file_lock(path + ".lock"):
        cache = {}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    cache = json.load(f)
            except (OSError, ValueError):  # a damaged cache is recomputed, never trusted
                cache = {}
        if key not in cache:
            mean, std, count = compute()
            cache[key] = {"mean": mean, "std": std, "examples": count}
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(cache, f, indent=1, sort_keys=True)
            os.replace(tmp, path)  # atomic: a kill never leaves half a cache
        return tuple(cache[key]["mean"]), tuple(cache[key]["std"])


def _channel_stats(ds) -> tuple[list[float], list[float], int]:
    """Per-channel mean and std of the images (scaled to [0, 1]) of a tf.data of {'image': uint8 HWC}."""
    import tensorflow as tf

    def sums(example):
        x = tf.cast(example["image"], tf.float64) / 255.0
        pixels = tf.cast(tf.shape(x)[0] * tf.shape(x)[1], tf.float64)
        return tf.reduce_sum(x, [0, 1]), tf.reduce_sum(x * x, [0, 1]), pixels

    total, squares, pixels, count = 0.0, 0.0, 0.0, 0
    for s, q, n in ds.take(STATS_EXAMPLES).map(sums).batch(256).as_numpy_iterator():
        total, squares, pixels, count = total + s.sum(0), squares + q.sum(0), pixels + n.sum(), count + len(n)
    if not count:
        raise ValueError("the train split is empty: expected at least one image to compute the mean / std")
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    return [float(m) for m in mean], [float(max(s, 1e-3)) for s in std], count


# ----------------------------------------------------------------------------- tfds datasets by name


def _tfds_builder(name: str, data_dir: str):
    """The (unprepared) builder of a tfds name; an unknown name lists the closest registered ones."""
    _, tfds = data._tf()
    base = name.split(":")[0].split("/")[0]
    registered = tfds.list_builders()
    if base not in registered:
        names = list(dict.fromkeys(data.known_datasets() + list(registered)))
        close = difflib.get_close_matches(base, names, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"config.dataset={name!r} is unknown: {hint}expected a known dataset, a tfds image-classification "
            "name (tfds.list_builders()), 'folder:PATH' or 'package.module:attribute'"
        )
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # an unknown config or version of a registered dataset
        raise ValueError(f"config.dataset={name!r} cannot be loaded by tfds: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _classification_keys(name: str, info) -> tuple[str, str]:
    """(image feature, label feature) of an image-classification dataset, else a one-line error."""
    _, tfds = data._tf()
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
    import types

    known = dict(builder.info.splits.items())
    if known:
        return known
    count = lambda split: int(builder.as_dataset(split=split).reduce(0, lambda c, _: c + 1))  # noqa: E731
    return {n: types.SimpleNamespace(num_examples=count(n)) for n in names}


def _pieces(builder, dataset: str, field: str, split: str) -> tuple[tuple[str, int, int], ...]:
    """config.<field> in tfds's slicing syntax -> absolute (split, start, end) pieces; bad ones are one line."""
    _, tfds = data._tf()
    try:
        instruction = tfds.core.ReadInstruction.from_spec(split)
        names = {piece.split("[")[0].strip() for piece in split.split("+")}
        absolute = instruction.to_absolute(_split_lengths(builder, names))
    except Exception as e:  # tfds's parse errors span several lines
        available = ", ".join(builder.info.splits.keys()) or "unknown until prepared"
        raise ValueError(
            f"config.{field}={split!r} is invalid for {dataset}: {_first_line(e)} (its splits: {available}; "
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


def _tfds_spec(config) -> data.DatasetSpec:
    name, data_dir = config.dataset, data.tfds_data_dir(config)
    image_key, label_key = _classification_keys(name, _tfds_builder(name, data_dir).info)
    builder = data.prepare_builder(config, name)
    train_split = config.get("train_split") or "train"
    train = _pieces(builder, name, "train_split", train_split)
    test = _pieces(builder, name, "test_split", config.get("test_split") or _default_test_split(name, builder))
    feature = builder.info.features[image_key]
    stored = tuple(feature.shape)
    height, width = _input_size(config, stored, name)
    augmentation, pad = _augmentation(config, (height, width))
    train_size = sum(end - start for _, start, end in train)
    spec = data.DatasetSpec(
        tfds_name=name,
        num_classes=builder.info.features[label_key].num_classes,
        input_shape=(height, width, int(stored[-1])),
        train_size=train_size,
        test_size=sum(end - start for _, start, end in test),
        tfds_test_split=test[0][0],
        mean=(0.0,),
        std=(1.0,),
        shuffle_buffer=min(train_size, 10_000),
        in_memory=_in_memory(stored, train_size),
        augmentation=augmentation,
        pad=pad,
        train_pieces=train,
        test_pieces=test,
        image_key=image_key,
        label_key=label_key,
        raw_shape=stored,
    )
    path = os.path.join(data_dir, builder.info.full_name, STATS_FILE)  # beside the prepared records

    def compute():
        split = data.slice_string(train, 0, train_size)
        return _channel_stats(data._tfds_examples(builder, spec, split, min(train_size, STATS_EXAMPLES)))

    mean, std = _cached_stats(path, train_split, compute)
    return _check_classes(config, _replace(spec, mean=mean, std=std))


def _replace(spec, **changes):
    import dataclasses

    return dataclasses.replace(spec, **changes)


def _check_classes(config, spec: data.DatasetSpec) -> data.DatasetSpec:
    if spec.num_classes < 2:
        raise ValueError(f"config.dataset={config.dataset!r} has {spec.num_classes} class: expected at least 2")
    return spec


# ----------------------------------------------------------------------------- a folder of images

_FOLDERS: dict[tuple[str, float], dict] = {}


def _class_files(directory: str) -> dict[str, list[str]]:
    """{class sub-folder: its image files (recursively, sorted)} of ``directory``."""
    classes = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = [
                os.path.join(root, f)
                for root, _, names in sorted(os.walk(entry.path))
                for f in sorted(names)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
            classes[entry.name] = files
    return classes


def _seeded_split(by_class: dict[str, list[str]], fraction: float):
    """Per class, a fixed-seed ``fraction`` (at least one image where a class has two) is the test split."""
    rng = np.random.default_rng(FOLDER_SPLIT_SEED)
    train, test = {}, {}
    for name, files in by_class.items():
        order = rng.permutation(len(files))
        held = min(len(files) - 1, max(1 if len(files) > 1 else 0, round(fraction * len(files))))
        test[name] = [files[i] for i in sorted(order[:held])]
        train[name] = [files[i] for i in sorted(order[held:])]
    return train, test


def _fraction(config) -> float:
    fraction = config.get("folder_test_fraction")
    return DEFAULT_TEST_FRACTION if fraction is None else float(fraction)


def folder_listing(config) -> dict:
    """{'root', 'classes', 'train': [(path, label)], 'test': [(path, label)]} of a folder dataset."""
    root = os.path.abspath(os.path.expanduser(config.dataset[len(FOLDER_PREFIX) :]))
    fraction = _fraction(config)
    key = (root, fraction)
    if key in _FOLDERS:
        return _FOLDERS[key]
    where = f"config.dataset={config.dataset!r}"
    if not os.path.isdir(root):
        raise ValueError(f"{where}: {root} is not a directory: expected a folder with one sub-folder per class")
    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test")):
        train, test = _class_files(os.path.join(root, "train")), _class_files(os.path.join(root, "test"))
        strays = sorted(set(test) - set(train))
        if strays:
            raise ValueError(f"{where}: test/ has classes that train/ lacks ({', '.join(strays[:5])}): expected none")
    else:
        train, test = _seeded_split(_class_files(root), fraction)
    classes = sorted(c for c, files in train.items() if files)
    total = sum(map(len, train.values())) + sum(map(len, test.values()))
    if total == 0:
        raise ValueError(
            f"{where} holds no images: expected CLASS/*{'|'.join(IMAGE_EXTENSIONS)} sub-folders (or train/ and test/)"
        )
    if len(classes) < 2:
        raise ValueError(f"{where} has {len(classes)} class with images ({', '.join(classes)}): expected at least 2")
    label = {c: i for i, c in enumerate(classes)}
    # A fixed-seed order, not class by class: validation is carved from the end of train, processes read ranges.
    train_pairs = [(f, label[c]) for c in classes for f in train[c]]
    train_pairs = [train_pairs[i] for i in np.random.default_rng(FOLDER_SPLIT_SEED).permutation(len(train_pairs))]
    test_pairs = [(f, label[c]) for c in sorted(test) for f in test[c] if c in label]
    if not test_pairs:
        raise ValueError(f"{where} leaves no test images: expected a test/ folder or folder_test_fraction > 0")
    _FOLDERS[key] = {"root": root, "classes": classes, "train": train_pairs, "test": test_pairs}
    return _FOLDERS[key]


_PIL_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "P": 3, "LA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "CMYK": 4}


def _image_headers(config, files: list[str]) -> tuple[tuple, int]:
    """(stored (H, W, C), with None where sizes differ; C) read from the image headers (no decoding)."""
    from PIL import Image

    sizes, channels = set(), {}
    for path in files:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
                channels.setdefault(_PIL_CHANNELS.get(image.mode, 3), path)
        except Exception as e:  # noqa: BLE001 - a damaged or mis-named file: one line naming it
            raise ValueError(
                f"config.dataset={config.dataset!r}: {path} is not a readable image ({_first_line(e)})"
            ) from None
    if len(channels) > 1:
        seen = ", ".join(f"{c} channel{'s' * (c > 1)}: {p}" for c, p in sorted(channels.items()))
        raise ValueError(
            f"config.dataset={config.dataset!r} has images of mixed channel counts ({seen}): expected one count "
            "for all (convert them, e.g. all to RGB)"
        )
    (count,) = channels
    (width, height) = next(iter(sizes)) if len(sizes) == 1 else (None, None)
    return (height, width, count), count


def _folder_spec(config) -> data.DatasetSpec:
    listing = folder_listing(config)
    stored, channels = _image_headers(config, [f for f, _ in listing["train"] + listing["test"]])
    height, width = _input_size(config, stored, config.dataset)
    augmentation, pad = _augmentation(config, (height, width))
    train_size = len(listing["train"])
    spec = data.DatasetSpec(
        tfds_name=config.dataset,
        num_classes=len(listing["classes"]),
        input_shape=(height, width, channels),
        train_size=train_size,
        test_size=len(listing["test"]),
        tfds_test_split="test",
        mean=(0.0,),
        std=(1.0,),
        shuffle_buffer=min(train_size, 10_000),
        in_memory=_in_memory(stored, train_size),
        augmentation=augmentation,
        pad=pad,
        kind="folder",
        source=listing["root"],
        raw_shape=stored,
        test_fraction=_fraction(config),
    )
    digest = hashlib.sha256("\n".join(f for f, _ in listing["train"]).encode()).hexdigest()[:16]
    path = os.path.join(data.tfds_data_dir(config), "soft_prune_jax_folders", f"{digest}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    compute = lambda: _channel_stats(folder_examples(spec, "train", 0, min(train_size, STATS_EXAMPLES)))  # noqa: E731
    mean, std = _cached_stats(path, listing["root"], compute)
    return _replace(spec, mean=mean, std=std)


def folder_examples(spec: data.DatasetSpec, which: str, start: int, end: int):
    """tf.data of {'image': uint8 (H, W, C), 'label': int32} of files [start, end) of the folder's split."""
    import tensorflow as tf

    listing = _FOLDERS[(spec.source, spec.test_fraction)]
    pairs = listing[which][start:end]
    paths = tf.constant([p for p, _ in pairs] or [""], tf.string)[: len(pairs)]
    labels = tf.constant([label for _, label in pairs] or [0], tf.int32)[: len(pairs)]
    channels = spec.input_shape[2]

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        return {"image": tf.ensure_shape(image, spec.stored_shape()), "label": label}

    return tf.data.Dataset.from_tensor_slices((paths, labels)).map(decode, num_parallel_calls=data._parallel_calls())


# ----------------------------------------------------------------------------- a user's pipeline

_FACTORIES: dict[str, tuple[Any, Any]] = {}


def _load_factory(ref: str):
    module_name, attr = ref.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `python launch/train.py` puts launch/ first, not the working directory
    try:
        target = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module: one line naming it
        raise ValueError(
            f"config.dataset={ref!r}: cannot import {module_name!r} ({type(e).__name__}: {_first_line(e)}): "
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
            f"config.dataset={ref!r}: the factory raised {type(e).__name__}: {_first_line(e)}; expected "
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


def _factory_spec(config) -> data.DatasetSpec:
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
    return data.DatasetSpec(
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
