"""What the pipeline knows of a dataset before reading it: ``DatasetSpec``, the four known datasets'
table (``DATASETS``, published constants), ``DatasetInfo`` and which kind of source a
``config.dataset`` names. Needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts of one dataset: what the pipeline needs to know before reading anything."""

    tfds_name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (H, W, C) of the model input after preprocessing
    train_size: int  # examples in the tfds train split
    test_size: int  # examples in the tfds split used as our test split
    tfds_test_split: str  # ImageNet's labelled evaluation split is tfds 'validation'
    mean: tuple[float, ...]  # per-channel mean / std of the train images scaled to [0, 1]
    std: tuple[float, ...]
    shuffle_buffer: int  # small datasets shuffle their whole range
    in_memory: bool  # small enough to keep decoded in memory (see reading.py)
    # Augmentation of the train images: 'imagenet' (random-resized-crop of the JPEG), 'pad_crop_flip'
    # (pad by ``pad``, crop back, flip), 'random_resized_crop' (area 8-100%, then flip) or 'none'
    # (a user pipeline augments its own images).
    augmentation: str = "pad_crop_flip"
    pad: int = 4
    kind: str = "tfds"  # 'tfds' | 'folder' | 'factory' (resolve.py resolves the last two and unknown tfds names)
    source: str = ""  # the folder path or the factory's 'package.module:attribute'
    test_fraction: float = 0.0  # a folder without train/ and test/: the share of each class held out as test
    # The tfds splits as absolute (split, start, end) pieces (empty: the whole tfds train / test split).
    train_pieces: tuple[tuple[str, int, int], ...] = ()
    test_pieces: tuple[tuple[str, int, int], ...] = ()
    image_key: str = "image"
    label_key: str = "label"
    raw_shape: tuple = ()  # (H, W, C) of the stored images, None where they vary; () = input_shape

    def pieces(self, which: str) -> tuple[tuple[str, int, int], ...]:
        """The absolute pieces of our 'train' or 'test' range, in reading order."""
        if which == "train":
            return self.train_pieces or (("train", 0, self.train_size),)
        return self.test_pieces or ((self.tfds_test_split, 0, self.test_size),)

    def stored_shape(self) -> tuple:
        return tuple(self.raw_shape) or tuple(self.input_shape)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10",
        10,
        (32, 32, 3),
        50_000,
        10_000,
        "test",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        50_000,
        True,
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        100,
        (32, 32, 3),
        50_000,
        10_000,
        "test",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        50_000,
        True,
    ),
    # ImageNet streams from disk every epoch; its shuffle buffer holds encoded JPEGs (~110 kB each).
    "imagenet2012": DatasetSpec(
        "imagenet2012",
        1000,
        (224, 224, 3),
        1_281_167,
        50_000,
        "validation",
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        10_000,
        False,
        augmentation="imagenet",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, (28, 28, 1), 60_000, 10_000, "test", (0.2860,), (0.3530,), 60_000, True, pad=2
    ),
}


class DatasetInfo(NamedTuple):
    num_classes: int
    input_shape: tuple[int, int, int]
    num_train: int  # examples the train iterator cycles through (all processes together)
    num_test: int  # examples eval_iterator(split='test') yields unpadded
    num_validation: int  # examples eval_iterator(split='validation') yields unpadded (0 = none)


def known_datasets() -> list[str]:
    return sorted(DATASETS)


# ----------------------------------------------------------------------------- kinds of config.dataset

FOLDER_PREFIX = "folder:"
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
TFDS_VERSION = re.compile(r":(\d+\.\d+\.\d+|\*|\d+\.\d+\.\*|\d+\.\*\.\*)$")  # 'mnist:3.0.1' is tfds, not a factory

# Fields that only tfds and folder datasets use; the known datasets keep their published recipe.
SOURCE_FIELDS = ("train_split", "test_split", "image_size", "augmentation")


def kind_of(name) -> str:
    """'known' | 'folder' | 'factory' | 'tfds' for a config.dataset value (a str)."""
    if name in DATASETS:
        return "known"
    if name.startswith(FOLDER_PREFIX):
        return "folder"
    if FACTORY.match(name) and not TFDS_VERSION.search(name):
        return "factory"
    return "tfds"
