"""The prune phase: surgery on the trained network, by the method's masks (compact/, prune.json)."""

from __future__ import annotations

import os

from soft_prune_jax.compact import export, surgery
from soft_prune_jax.pipeline import user_model
from soft_prune_jax.pipeline.budget import landing_record
from soft_prune_jax.pipeline.cut import surgery_choice, surgery_round_to
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.pipeline.workdir import COMPACT_DIR, trained_variables
from soft_prune_jax.training.experiment import create_model


def prune_phase(config, workdir, *, dataset, devices=None) -> dict:
    input_shape = dataset.get_dataset_info(config).input_shape
    if user_model.is_user_model(config):  # cut by the graph analysis (pipeline/user_model.py)
        variables = trained_variables(config, workdir)
        summary = user_model.prune(config, variables, input_shape, os.path.join(workdir, COMPACT_DIR))
        write_json(workdir, "prune.json", summary)
        return summary
    model = create_model(config)
    variables = trained_variables(config, workdir)
    latency_record: dict = {}
    choice = surgery_choice(config, model, variables, input_shape, record=latency_record)
    round_to = surgery_round_to(config, input_shape, model)
    plans = surgery.plan(model, variables, round_to=round_to, **choice)
    compact, compact_vars = surgery.prune(model, variables, round_to=round_to, **choice)
    # overwrite: rerunning the phase on its own recomputes the same compact model from the same checkpoint.
    export.save_compact(
        os.path.join(workdir, COMPACT_DIR),
        compact,
        compact_vars,
        overwrite=True,
        extra={"source": "prune", "method": config.method, "round_to": config.round_to},
    )
    summary = {
        "kept_channels": {name: len(p.kept) for name, p in plans.items()},
        "total_channels": {name: p.total for name, p in plans.items()},
        # docs/method.md, "Where the masks sit": a plain chain never loses its last channel; say where that happened.
        "kept_by_fallback": sorted(name for name, p in plans.items() if p.kept_by_fallback),
        # evaluate's reference masks: a cut landed on a measured latency cannot be recomputed exactly
        "kept_indices": {name: p.kept.tolist() for name, p in plans.items()},
    }
    landing = landing_record(config, model, variables, input_shape, plans)
    if landing is not None:  # a MAC budget: target vs reached
        summary["budget"] = landing
    if latency_record:  # a latency budget: target, estimate and measurement
        summary["budget"] = latency_record
    write_json(workdir, "prune.json", summary)
    return summary
