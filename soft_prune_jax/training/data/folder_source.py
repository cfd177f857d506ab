"""A folder of images (``--config.dataset=folder:/data/my_images``) as a ``DatasetSpec``, and its files
as tf.data examples.

``PATH/CLASS/*.png|jpg|...`` (sub-folders of a class are included), or ``PATH/train/CLASS`` and
``PATH/test/CLASS``; without train/ and test/ a fixed-seed ``config.folder_test_fraction`` of each
class is the test split. Its mean / std are cached under the tfds data_dir; its size and augmentation
follow ``image_defaults``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from soft_prune_jax.training.data import channel_stats, image_defaults
from soft_prune_jax.training.data.errors import first_line
from soft_prune_jax.training.data.spec import FOLDER_PREFIX, DatasetSpec
from soft_prune_jax.training.data.tf_runtime import parallel_calls
from soft_prune_jax.training.data.tfds_builders import tfds_data_dir

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
DEFAULT_TEST_FRACTION = 0.2  # config.folder_test_fraction=None
FOLDER_SPLIT_SEED = 0  # fixed, so that every run of a folder is tested on the same images

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
    empty = sorted(c for c, files in train.items() if not files)
    if empty:  # as torchvision's ImageFolder: a silently missing class would shift every label after it
        raise ValueError(
            f"{where}: class folder(s) {', '.join(empty[:5])} hold no training images: expected at least one per class"
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
                f"config.dataset={config.dataset!r}: {path} is not a readable image ({first_line(e)})"
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


def _stamp(path: str) -> str:
    stat = os.stat(path)
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


def folder_spec(config) -> DatasetSpec:
    """The spec of the folder config.dataset names (listed, headers read, mean / std cached); one-line errors."""
    listing = folder_listing(config)
    stored, channels = _image_headers(config, [f for f, _ in listing["train"] + listing["test"]])
    height, width = image_defaults.input_size(config, stored, config.dataset)
    augmentation, pad = image_defaults.augmentation(config, (height, width))
    train_size = len(listing["train"])
    spec = DatasetSpec(
        tfds_name=config.dataset,
        num_classes=len(listing["classes"]),
        input_shape=(height, width, channels),
        train_size=train_size,
        test_size=len(listing["test"]),
        tfds_test_split="test",
        mean=(0.0,),
        std=(1.0,),
        shuffle_buffer=min(train_size, 10_000),
        in_memory=image_defaults.in_memory(stored, train_size),
        augmentation=augmentation,
        pad=pad,
        kind="folder",
        source=listing["root"],
        raw_shape=stored,
        test_fraction=_fraction(config),
    )
    # Keyed by the train files' names, sizes and times: images replaced under the same names are new data.
    digest = hashlib.sha256("\n".join(_stamp(f) for f, _ in listing["train"]).encode()).hexdigest()[:16]
    path = os.path.join(tfds_data_dir(config), "soft_prune_jax_folders", f"{digest}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def compute():
        return channel_stats.mean_std(folder_examples(spec, "train", 0, min(train_size, channel_stats.STATS_EXAMPLES)))

    mean, std = channel_stats.cached(path, listing["root"], compute, channels)
    return dataclasses.replace(spec, mean=mean, std=std)


def folder_examples(spec: DatasetSpec, which: str, start: int, end: int):
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

    return tf.data.Dataset.from_tensor_slices((paths, labels)).map(decode, num_parallel_calls=parallel_calls())
