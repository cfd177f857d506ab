"""Splitting a CPU-only host into several XLA devices, so that a training step keeps every core busy.

XLA:CPU runs a step's operations one after another. Its convolutions use every core, but the many
elementwise, reduction and copy operations of a training step (BatchNorm, ReLU, masks, the gradients'
reshapes) run on one thread each, so on one CPU device a training step leaves cores idle for much of
its time. Split into ``n`` devices (``jax_num_cpu_devices``), the loop's data parallelism (pmap or
shard_map) runs ``n`` smaller steps side by side, and their single-threaded operations overlap.

Nothing about the numbers changes beyond float rounding: the global batch is the same, BatchNorm
statistics and gradients are averaged over devices, and every device draws the same Gumbel masks
(``training/steps.py``), as one device would for the whole batch.

``config.cpu_devices``: an int >= 1, or 'auto' (the default): 2 when JAX computes on a CPU with at
least 2 cores, the batch sizes split evenly, the run is on one host and ``XLA_FLAGS`` does not already
force a device count; else 1. (Measured on 2 cores only: two devices made the demo's step faster,
docs/RESULTS.md; four on two cores were slower than two.) It must be applied before JAX starts its backend,
which is why ``launch/train.py`` calls ``apply`` first thing.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
from absl import logging

from soft_prune_jax import host_memory

AUTO = "auto"
AUTO_DEVICES = 2
FORCE_FLAG = "--xla_force_host_platform_device_count"


def check_setting(value) -> None:
    """A clear error unless ``value`` is 'auto' or an int >= 1."""
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.cpu_devices={value!r} is invalid: expected an int >= 1 or 'auto'")


def _is_distributed(config) -> bool:
    dist = config.get("distributed")
    if dist is None:
        return False
    return bool(dist.get("coordinator_address")) or (dist.get("num_processes") or 1) > 1


def resolve(config, *, cores: Optional[int] = None, environ=None, on_cpu: Optional[bool] = None) -> tuple[int, str]:
    """(CPU devices to create, why): ``config.cpu_devices`` as the module docstring says.

    0 devices means "leave JAX's own setting alone" (an accelerator computes, or XLA_FLAGS decides).
    """
    setting = config.get("cpu_devices", AUTO)
    check_setting(setting)
    environ = environ if environ is not None else os.environ
    if on_cpu is None:
        on_cpu = host_memory.computes_on_cpu(environ)
    if not on_cpu:
        return 0, "JAX computes on an accelerator"
    if setting != AUTO:
        return int(setting), "config.cpu_devices"
    if FORCE_FLAG in environ.get("XLA_FLAGS", ""):
        return 0, f"XLA_FLAGS sets {FORCE_FLAG}"
    if _is_distributed(config):
        return 1, "auto: a multi-host run keeps one CPU device per process"
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    if cores < AUTO_DEVICES:
        return 1, f"auto: {cores} core"
    batches = {int(config.get(name)) for name in ("batch_size", "eval_batch_size") if config.get(name)}
    uneven = sorted(b for b in batches if b % AUTO_DEVICES)
    if uneven:
        return 1, f"auto: batch size {uneven[0]} does not split over {AUTO_DEVICES} devices"
    return AUTO_DEVICES, f"auto: {cores} cores"


def apply(config) -> dict:
    """Creates the CPU devices ``resolve`` chooses; {'devices', 'reason'}. Call before any JAX computation."""
    n, reason = resolve(config)
    if n > 1 or (n == 1 and config.get("cpu_devices", AUTO) != AUTO):  # 'auto' -> 1 is JAX's own default
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError as e:  # JAX already started its backend in this process
            raise ValueError(
                f"config.cpu_devices={config.get('cpu_devices', AUTO)!r} cannot take effect: JAX's backend "
                "is already running in this process (apply it before any JAX computation, or set "
                "config.cpu_devices=1)"
            ) from e
        logging.info("CPU split into %d XLA device(s) (%s)", n, reason)
    return {"devices": n or None, "reason": reason}
