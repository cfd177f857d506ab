"""The per-channel mean / std of datasets without published constants: computed once from the train
images and cached in a JSON file (tfds by name: beside the prepared data; a folder: under the data_dir)."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from soft_prune_jax.training.data.file_lock import file_lock

STATS_EXAMPLES = 20_000  # mean / std from the first this many train images (within ~1e-3 of the whole set's)
STATS_FILE = "soft_prune_jax_stats.json"


def _numbers(values, channels: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == channels
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values)
    )


def _usable(entry, channels: int) -> bool:
    """Whether a cache entry holds ``channels`` finite means and positive finite stds."""
    if not isinstance(entry, dict):
        return False
    mean, std = entry.get("mean"), entry.get("std")
    return _numbers(mean, channels) and _numbers(std, channels) and min(std) > 0


def _read(path: str) -> dict:
    """The cache file's entries; a missing, unreadable or malformed file is an empty cache."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = None
    if not isinstance(cache, dict):
        logging.warning("%s is damaged: computing the mean / std again", path)
        return {}
    return cache


def cached(path: str, key: str, compute, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) under ``key`` in the JSON file ``path``, computed and added (atomically) if absent.

    A damaged file or entry (not JSON, not ``channels`` finite numbers, a std <= 0) is computed again
    and rewritten, never trusted.
    """
    with file_lock(path + ".lock"):
        cache = _read(path)
        if key in cache and not _usable(cache[key], channels):
            logging.warning("%s: the entry %r is damaged: computing the mean / std again", path, key)
            del cache[key]
        if key not in cache:
            mean, std, count = compute()
            cache[key] = {"mean": mean, "std": std, "examples": count}
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(cache, f, indent=1, sort_keys=True)
            os.replace(tmp, path)  # atomic: a kill never leaves half a cache
        return tuple(cache[key]["mean"]), tuple(cache[key]["std"])


def mean_std(ds) -> tuple[list[float], list[float], int]:
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
