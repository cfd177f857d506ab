"""Runs an experiment's phases on one workdir.

    python launch/train.py --config=configs/fashion_mnist.py --workdir=/tmp/scp_fmnist
    python launch/train.py --config=configs/cifar.py:cifar10_resnet56 --workdir=DIR --phases=evaluate,report
    python launch/train.py --config=configs/cifar.py:cifar10_vgg16 --config.num_epochs=1 --workdir=DIR

Phases (default: all, in this order): train, prune, finetune, evaluate, benchmark, report.
Killed and started again with the same command, a run resumes from its last checkpoint; a workdir
holding a run of another config is refused. Multi-host: run the same command on every host with
--config.distributed.coordinator_address, num_processes and process_id (or leave them None where
the cluster environment provides them, e.g. SLURM); --config.batch_size is the global batch.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from soft_prune_jax import host_memory, pipeline
from soft_prune_jax.training import checkpoint, config_validation, cpu_devices, distributed

# The config files import each other as the package ``configs`` (e.g. ``from configs import default``),
# which lives in this checkout's root, not in the installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "An ml_collections config file: configs/FILE.py[:VARIANT].", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries, the compact model and the report.")
flags.DEFINE_string(
    "phases", "train,prune,finetune,evaluate,benchmark,report", "Comma-separated phases to run, in pipeline order."
)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """Drops INFO records of orbax and tfds (a page per checkpoint); warnings and errors still show."""

    _NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

    def filter(self, record) -> bool:
        return record.levelno >= py_logging.WARNING or not any(p in record.pathname for p in self._NOISY)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = FLAGS.config
    try:
        # Before anything starts JAX's backend: on the CPU, freed host memory stays mapped (no page faults
        # per step), and a CPU-only host gets one XLA device per core (or as set).
        host_memory.retain_freed_memory()
        cpu_devices.apply(config)
        # Joins the multi-host runtime only when the config or environment asks.
        distributed.initialize(config)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:  # TensorFlow (the input pipeline) must leave the accelerators to JAX
        import tensorflow as tf

        tf.config.experimental.set_visible_devices([], "GPU")
    except ImportError:
        pass
    logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(), jax.local_devices())

    try:  # a bad config or a foreign workdir is one line, before any compute
        phases = pipeline.parse_phases(FLAGS.phases)
        config_validation.validate(config)
        checkpoint.ensure_workdir_config(FLAGS.workdir, config)
    except (ValueError, OSError) as e:  # OSError: an unwritable or full workdir
        sys.exit(f"error: {e}")
    pipeline.run(config, FLAGS.workdir, phases)


if __name__ == "__main__":
    app.run(main)
