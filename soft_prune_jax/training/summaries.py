"""TensorBoard summaries (tensorboardX) written by process 0; a no-op on every other process.

tensorboardX writes from a background thread that dies on an I/O error (disk full, directory
gone), after which its bounded queue fills and the training loop would block for ever. So every
batch of summaries ends with the public ``flush()``, which writes the event file in this thread:
a failing disk is then a clear OSError here, and the queue is made larger than any number of
events written between two flushes so that a put never blocks first.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import numpy as np
from absl import logging
from tensorboardX import SummaryWriter

_MAX_QUEUE = 10_000


def tag(name: str) -> str:
    """``name`` as a legal TensorBoard tag (letters, digits, ``_ . / -``): a traced unit's name such as
    ``masked_bn:masked_bn0`` would otherwise be renamed by tensorboardX with one log line per step."""
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


class Summaries:
    def __init__(self, logdir: str):
        self._logdir = logdir
        self._writer = SummaryWriter(logdir=logdir, max_queue=_MAX_QUEUE) if jax.process_index() == 0 else None

    def _flush(self) -> None:
        try:
            self._writer.flush()
        except OSError as e:
            raise OSError(
                f"writing TensorBoard summaries to {self._logdir} failed ({e.strerror or e}): disk full or "
                "not writable? The training checkpoints written so far are kept"
            ) from e

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(tag(name), float(value), step)
            self._flush()

    def histograms(self, step: int, values: Mapping[str, np.ndarray]) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_histogram(tag(name), np.asarray(value), step)
            self._flush()

    def close(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
        except OSError as e:  # runs in fit's `finally`: must not mask the error that stopped training
            logging.warning("closing the TensorBoard writer for %s failed: %s", self._logdir, e)
        self._writer = None
