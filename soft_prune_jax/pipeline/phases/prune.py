"""The prune phase: the trained network cut by the method's masks (compact/, prune.json)."""

from __future__ import annotations

import os

from soft_prune_jax.pipeline import model_path
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.pipeline.workdir import COMPACT_DIR, trained_variables


def prune_phase(config, workdir, *, dataset, devices=None) -> dict:
    input_shape = dataset.get_dataset_info(config).input_shape
    variables = trained_variables(config, workdir)
    summary = model_path.prune(config, variables, input_shape, os.path.join(workdir, COMPACT_DIR))
    write_json(workdir, "prune.json", summary)
    return summary
