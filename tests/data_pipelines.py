"""Input pipelines of the kind a user plugs in with ``--config.dataset=data_pipelines:NAME`` (tests only).

Each factory takes the config and returns ``(train, eval, num_classes)``; the bad ones return what
users get wrong.
"""

from __future__ import annotations

import numpy as np

SHAPE = (8, 8, 1)
CLASSES = 4


class Batches:
    """Re-iterable: every pass yields the same batches of learnable class prototypes plus noise.

    With ``indexed``, example i has label i % CLASSES and the value i in every pixel (to trace rows).
    """

    def __init__(self, num_examples: int, batch: int, seed: int, *, indexed: bool = False):
        rng = np.random.default_rng(seed)
        prototypes = np.random.default_rng(1234).normal(size=(CLASSES, *SHAPE)).astype(np.float32)
        if indexed:
            self.labels = np.arange(num_examples) % CLASSES
            self.images = np.broadcast_to(
                np.arange(num_examples, dtype=np.float32)[:, None, None, None], (num_examples, *SHAPE)
            )
        else:
            self.labels = rng.integers(0, CLASSES, num_examples)
            self.images = prototypes[self.labels] + 0.3 * rng.normal(size=(num_examples, *SHAPE)).astype(np.float32)
        self.batch = batch

    def __iter__(self):
        for start in range(0, len(self.labels), self.batch):
            yield {"image": self.images[start : start + self.batch], "label": self.labels[start : start + self.batch]}


def tiny(config):
    # Batches of 10 and 7: the project re-cuts them into config.batch_size / eval_batch_size.
    return Batches(96, 10, 0), Batches(20, 7, 1), CLASSES


def indexed(config):
    return Batches(40, 6, 0, indexed=True), Batches(11, 4, 1, indexed=True), CLASSES


def no_arguments():
    return Batches(32, 8, 0), Batches(8, 8, 1), CLASSES


def returns_two(config):
    return Batches(32, 8, 0), Batches(8, 8, 1)


def one_shot_generator(config):
    return iter(Batches(32, 8, 0)), Batches(8, 8, 1), CLASSES


def wrong_keys(config):
    return [{"x": np.zeros((4, *SHAPE)), "y": np.zeros(4, int)}], Batches(8, 8, 1), CLASSES


def float_labels(config):
    return [{"image": np.zeros((4, *SHAPE)), "label": np.zeros(4)}], Batches(8, 8, 1), CLASSES


def one_class(config):
    return Batches(32, 8, 0), Batches(8, 8, 1), 1


def raises(config):
    raise RuntimeError("no such bucket")


NOT_CALLABLE = 3
