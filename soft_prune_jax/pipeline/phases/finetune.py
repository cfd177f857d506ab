"""The finetune phase: prune's compact model trained again, at its own cost (checkpoints/finetune/, finetuned/)."""

from __future__ import annotations

import os

from soft_prune_jax.pipeline import model_path
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.pipeline.workdir import FINETUNED_DIR, trained_variables
from soft_prune_jax.training.loop import fit


def finetune_phase(config, workdir, *, dataset, devices=None) -> dict:
    """LR finetune_learning_rate, the same schedule shape over finetune_epochs (0 = skipped)."""
    epochs = int(config.finetune_epochs)
    if epochs == 0:
        summary = {"skipped": True, "reason": "finetune_epochs=0"}
        write_json(workdir, "finetune.json", summary)
        return summary
    input_shape = dataset.get_dataset_info(config).input_shape
    phase = model_path.finetune_phase(config, workdir, input_shape, trained_variables(config, workdir), epochs)
    result = fit(config, workdir, phase, dataset=dataset, devices=devices)
    model_path.save_finetuned(
        config, workdir, input_shape, result.state.variables, os.path.join(workdir, FINETUNED_DIR), epochs
    )
    summary = {
        "skipped": False,
        "steps": result.steps,
        "train_metrics": result.train_metrics,
        "validation": result.validation,
    }
    write_json(workdir, "finetune.json", summary)
    return summary
