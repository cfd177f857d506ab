"""How TensorFlow runs under the pipeline: imported lazily and kept off the GPUs, fixed parallelism,
deterministic order.

TensorFlow is imported only inside the functions that read data, so the rest of the package (and the
GPU image, which has no TensorFlow) never needs it. The entry points call ``import_tensorflow()``
(import + hide GPUs); the helpers they trace into tf.data import ``tensorflow`` directly, so AutoGraph
never sees ``import_tensorflow``'s side effects.
"""

from __future__ import annotations

import logging
import os

_TF_READY = False


def import_tensorflow():
    """Imports TensorFlow and tfds on first use and hides the GPUs from TensorFlow; returns (tf, tfds)."""
    global _TF_READY
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter; a user's value wins
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if not _TF_READY:
        try:
            tf.config.experimental.set_visible_devices([], "GPU")
        except RuntimeError:  # TF initialised its devices before this call; they can no longer be hidden
            logging.warning("TensorFlow was initialised before soft_prune_jax.data could hide the GPUs")
        _TF_READY = True
    return tf, tfds


# Fixed parallelism instead of tf.data's autotuning. Autotuning runs a model thread that re-optimises on
# a period growing to a minute, and destroying an iterator (the loop opens one per epoch) waits for that
# thread's current wait to end: up to a minute of a stalled training loop at an epoch boundary.
PREFETCH_BATCHES = 4


def parallel_calls() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def with_fixed_options(ds):
    """``ds`` deterministic (parallel maps keep their order) and without autotuning (see PREFETCH_BATCHES)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their order: same seed, same batches
    options.autotune.enabled = False  # see PREFETCH_BATCHES
    return ds.with_options(options)
