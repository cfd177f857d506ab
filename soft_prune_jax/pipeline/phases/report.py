"""The report phase: everything the other phases recorded plus MACs, parameters and channels
(report.json, report.md, widths.png)."""

from __future__ import annotations

import os

import jax

from soft_prune_jax.measure import markdown
from soft_prune_jax.measure import width_report as report
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.pipeline.records import read_existing, write_json
from soft_prune_jax.pipeline.workdir import final_name, trained_variables
from soft_prune_jax.pruners import get_method
from soft_prune_jax.training.checkpoint import config_to_dict

RECORDS = ("train", "prune", "finetune", "evaluate", "benchmark", "timings")


def report_phase(config, workdir, *, dataset, devices=None) -> dict:
    input_shape = tuple(dataset.get_dataset_info(config).input_shape)
    variables = trained_variables(config, workdir)
    which = final_name(workdir)
    # MACs per layer from the graph, the cut prune chose
    comparison = report.compare(*model_path.counts(config, workdir, variables, input_shape))
    method = get_method(config.method)
    out = {
        "model": config.model,
        "dataset": config.dataset,
        "method": config.method,
        "method_details": {
            "label": method.label,
            "settings": method.settings(config),
            "keep_one_rule": method.keep_one_rule,
        },
        "macs_convention": "multiply-accumulates per example of conv and dense layers (FLOPs = 2 x MACs)",
        "pruning": report.to_dict(comparison),
        "compact_model": which,
        "config": config_to_dict(config),
    }
    out |= read_existing(workdir, RECORDS)
    write_json(workdir, "report.json", out)
    if jax.process_index() == 0:
        plot = report.plot_widths(
            os.path.join(workdir, "widths.png"), comparison, title=f"{config.model} on {config.dataset}, {method.label}"
        )
        with open(os.path.join(workdir, "report.md"), "w") as f:
            f.write(markdown.render(out, report.format_table(comparison), plot))
    return out
