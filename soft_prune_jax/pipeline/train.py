"""The train phase: joint training from scratch, as the config's method trains (checkpoints/train/, train.json)."""

from __future__ import annotations

import dataclasses

from soft_prune_jax.pipeline import user_model
from soft_prune_jax.pipeline.budget import training_budget
from soft_prune_jax.pipeline.cut import progress_macs_fn
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.training.experiment import training_phase
from soft_prune_jax.training.loop import fit


def train_phase(config, workdir, *, dataset, devices=None) -> dict:
    input_shape = dataset.get_dataset_info(config).input_shape
    if user_model.is_user_model(config):  # masks inserted from outside (pipeline/user_model.py)
        phase = user_model.training_phase(config, input_shape)
    else:
        phase = training_phase(config)
        phase = dataclasses.replace(phase, budget=training_budget(config, phase.model, input_shape))
    macs_fn = progress_macs_fn(phase.model, input_shape) if phase.mask is not None else None
    result = fit(config, workdir, phase, dataset=dataset, devices=devices, macs_fn=macs_fn)
    summary = {"steps": result.steps, "train_metrics": result.train_metrics, "validation": result.validation}
    write_json(workdir, "train.json", summary)
    return summary
