"""The preprocessing of datasets without a published recipe (tfds by name, a folder of images).

Both are resized to ``config.image_size`` (None: the images' own size where they all share one, else
224) and augmented by ``config.augmentation``: 'pad_crop_flip' (pad by an eighth of the side, crop
back, flip; the default for images of at most 64 pixels a side) or 'random_resized_crop' (area 8-100%,
aspect 3/4-4/3, then flip; evaluation resizes and centre-crops 87.5%, as ImageNet; the default above).
"""

from __future__ import annotations

import logging
import math

AUGMENTATIONS = ("pad_crop_flip", "random_resized_crop")
SMALL_IMAGE_SIDE = 64  # images up to this side get pad-crop-flip by default, larger ones random-resized-crop
DEFAULT_IMAGE_SIZE = 224  # the input size of images that come in many sizes, unless config.image_size says
IN_MEMORY_BYTES = 2 << 30  # decoded train images up to this size are held in memory (see reading.py)


def input_size(config, stored: tuple, what: str) -> tuple[int, int]:
    """(H, W) of the model input: config.image_size squared, else the images' own fixed size, else 224."""
    size = config.get("image_size")
    if size is not None:
        return int(size), int(size)
    if stored[0] is None or stored[1] is None:
        logging.info("%s has images of many sizes: resizing them to %d (config.image_size)", what, DEFAULT_IMAGE_SIZE)
        return DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE
    return int(stored[0]), int(stored[1])


def augmentation(config, size: tuple[int, int]) -> tuple[str, int]:
    """(augmentation, pad): config.augmentation, else by size: small images pad-crop-flip, larger ones RRC."""
    choice = config.get("augmentation") or ("pad_crop_flip" if max(size) <= SMALL_IMAGE_SIDE else "random_resized_crop")
    return choice, max(1, round(min(size) / 8))  # CIFAR: 32 -> 4


def in_memory(stored: tuple, count: int) -> bool:
    return None not in stored and count * math.prod(stored) <= IN_MEMORY_BYTES
