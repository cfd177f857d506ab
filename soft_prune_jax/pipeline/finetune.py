"""The finetune phase: the compact model (no masks) trained again (checkpoints/finetune/, finetuned/)."""

from __future__ import annotations

import os

from soft_prune_jax.compact import export
from soft_prune_jax.pipeline import user_model
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.pipeline.workdir import COMPACT_DIR, FINETUNED_DIR, trained_variables
from soft_prune_jax.training.loop import Phase, fit


def finetune_phase(config, workdir, *, dataset, devices=None) -> dict:
    """LR finetune_learning_rate, the same schedule shape over finetune_epochs (0 = skipped)."""
    epochs = int(config.finetune_epochs)
    if epochs == 0:
        summary = {"skipped": True, "reason": "finetune_epochs=0"}
        write_json(workdir, "finetune.json", summary)
        return summary
    if user_model.is_user_model(config):  # prune's compact model itself, trained compact (pipeline/user_model.py)
        input_shape = dataset.get_dataset_info(config).input_shape
        phase = user_model.finetune_phase(config, workdir, input_shape, trained_variables(config, workdir), epochs)
        result = fit(config, workdir, phase, dataset=dataset, devices=devices)
        user_model.save_finetuned(
            config, workdir, input_shape, result.state.variables, os.path.join(workdir, FINETUNED_DIR), epochs
        )
        return _record(workdir, result)
    model, variables = export.load_compact(os.path.join(workdir, COMPACT_DIR))
    # The same schedule shape: the boundaries keep their fraction of the run.
    scale = epochs / float(config.num_epochs)
    phase = Phase(
        "finetune",
        model,
        float(config.finetune_learning_rate),
        epochs,
        lr_boundaries=tuple(b * scale for b in config.lr_boundaries),
        variables=variables,
        seed_offset=1,
    )
    result = fit(config, workdir, phase, dataset=dataset, devices=devices)
    export.save_compact(
        os.path.join(workdir, FINETUNED_DIR),
        model,
        result.state.variables,
        overwrite=True,
        extra={"source": "finetune", "epochs": epochs},
    )
    return _record(workdir, result)


def _record(workdir, result) -> dict:
    summary = {
        "skipped": False,
        "steps": result.steps,
        "train_metrics": result.train_metrics,
        "validation": result.validation,
    }
    write_json(workdir, "finetune.json", summary)
    return summary
