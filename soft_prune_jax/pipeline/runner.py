"""Running phases in order on one workdir, after checking the config and recording it there."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import jax
from absl import logging

from soft_prune_jax.pipeline.phases.benchmark import benchmark_phase
from soft_prune_jax.pipeline.phases.evaluate import evaluate_phase
from soft_prune_jax.pipeline.phases.finetune import finetune_phase
from soft_prune_jax.pipeline.phases.prune import prune_phase
from soft_prune_jax.pipeline.phases.report import report_phase
from soft_prune_jax.pipeline.phases.train import train_phase
from soft_prune_jax.pipeline.records import record_seconds
from soft_prune_jax.training import config_validation
from soft_prune_jax.training import data as default_dataset
from soft_prune_jax.training.checkpoint import ensure_workdir_config
from soft_prune_jax.training.distributed import sync

RUNNERS = {
    "train": train_phase,
    "prune": prune_phase,
    "finetune": finetune_phase,
    "evaluate": evaluate_phase,
    "benchmark": benchmark_phase,
    "report": report_phase,
}
PHASES = tuple(RUNNERS)


def parse_phases(text: str | Sequence[str]) -> tuple[str, ...]:
    """'train,prune' -> ('train', 'prune'), in pipeline order; unknown names are a clear error."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in names if p not in PHASES]
    if unknown or not names:
        raise ValueError(f"phases={text!r} is invalid: expected a comma-separated subset of {','.join(PHASES)}")
    return tuple(p for p in PHASES if p in names)


def run(
    config,
    workdir: str,
    phases: str | Sequence[str] = PHASES,
    *,
    dataset=None,
    devices: Optional[Sequence[jax.Device]] = None,
) -> dict:
    """Validates the config, records it in the workdir (refusing a different one) and runs ``phases``.

    dataset: a module-like object with ``get_dataset_info``, ``train_iterator`` and ``eval_iterator``
      (default: ``soft_prune_jax.training.data``, the tfds pipelines).
    """
    phases = parse_phases(phases)
    config_validation.validate(config, num_devices=len(devices) * jax.process_count() if devices else None)
    ensure_workdir_config(workdir, config)
    sync("workdir config recorded")
    dataset = dataset if dataset is not None else default_dataset
    results = {}
    for name in phases:
        logging.info("phase %s (workdir %s)", name, workdir)
        start = time.perf_counter()
        results[name] = RUNNERS[name](config, workdir, dataset=dataset, devices=devices)
        record_seconds(workdir, name, time.perf_counter() - start)
        sync(f"phase {name} done")  # multi-host: process 0's JSON exists before any process reads it
    return results
