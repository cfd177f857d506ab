"""The train phase: joint training from scratch, as the config's method trains (checkpoints/train/, train.json)."""

from __future__ import annotations

from soft_prune_jax.pipeline import model_path
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.training.loop import fit


def train_phase(config, workdir, *, dataset, devices=None) -> dict:
    input_shape = dataset.get_dataset_info(config).input_shape
    phase = model_path.training_phase(config, input_shape)  # the method's masks inserted by replay
    macs_fn = model_path.progress_macs(config, input_shape, phase)  # the progress line's kept-MACs ratio
    result = fit(config, workdir, phase, dataset=dataset, devices=devices, macs_fn=macs_fn)
    summary = {"steps": result.steps, "train_metrics": result.train_metrics, "validation": result.validation}
    write_json(workdir, "train.json", summary)
    return summary
