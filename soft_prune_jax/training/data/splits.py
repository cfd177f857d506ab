"""Our logical splits as example ranges, and ranges as absolute tfds slices.

``'train'`` is the tfds train split minus the last ``validation_examples`` examples,
``'validation'`` is those last examples (model selection never looks at the test set) and
``'test'`` is the tfds test split (ImageNet: its labelled ``validation`` split). The split sizes
are facts of the spec, so the example ranges are computed before reading: every process reads only
its own contiguous range (``sharding.process_slice``), given to tfds as an absolute slice such as
``train[0:25000]``.
"""

from __future__ import annotations

from typing import Sequence

from soft_prune_jax.training.data.spec import DatasetSpec

SPLITS = ("train", "validation", "test")


def split_range(config, spec: DatasetSpec, split: str) -> tuple[str, int, int]:
    """Our logical split -> ('train' or 'test', [start, end) within that range), overrides applied."""
    validation = config.validation_examples
    if split == "train":
        end = config.get("num_train_examples") or spec.train_size - validation
        return "train", 0, end
    if split == "validation":
        if validation == 0:
            raise ValueError(
                "split='validation' needs config.validation_examples > 0 (it is carved from the end "
                "of train); got validation_examples=0"
            )
        start = spec.train_size - validation
        return "train", start, start + min(validation, config.get("num_eval_examples") or validation)
    if split == "test":
        return "test", 0, config.get("num_eval_examples") or spec.test_size
    raise ValueError(f"split={split!r} is unknown: expected one of {', '.join(SPLITS)}")


def slice_string(pieces: Sequence[tuple[str, int, int]], start: int, end: int) -> str:
    """Positions [start, end) of the concatenated ``pieces`` as an absolute tfds split, e.g.
    'train[0:25000]', or 'train[900:1000]+validation[0:50]' where the range spans two pieces."""
    if start >= end:  # a process without examples reads an empty slice
        name, first, _ = pieces[0]
        return f"{name}[{first}:{first}]"
    parts, position = [], 0
    for name, first, last in pieces:
        lo, hi = max(start, position), min(end, position + last - first)
        if lo < hi:
            parts.append(f"{name}[{first + lo - position}:{first + hi - position}]")
        position += last - first
    return "+".join(parts)
