"""The benchmark phase: median latency of the dense architecture and the final compact model (benchmark.json).

Where the launcher's malloc policy is applied, both are timed in a fresh process
(``pipeline.fresh_timing`` says why).

``benchmark.compare`` also reports each model's FLOP rate against the machine's sgemm rate, so a
speed-up (or its absence) caused by a slow conv shape cannot hide.
"""

from __future__ import annotations

import os

from absl import logging

from soft_prune_jax.measure import timing as benchmark
from soft_prune_jax.pipeline import fresh_timing, model_path
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.pipeline.workdir import final_compact, trained_variables


def benchmark_phase(config, workdir, *, dataset, devices=None) -> dict:
    # The dense architecture with the trained weights (masks off): what pruning is measured against.
    input_shape = tuple(dataset.get_dataset_info(config).input_shape)
    variables = trained_variables(config, workdir)
    compact, compact_vars, which = final_compact(workdir)
    dense = model_path.dense_model(config, input_shape)  # the model as written; MACs from its graph
    dense_count, compact_count = model_path.counts(config, workdir, variables, input_shape)
    macs = {
        name: {"macs": c.macs, "params": c.params} for name, c in (("dense", dense_count), ("compact", compact_count))
    }
    batch_sizes = tuple(int(b) for b in config.benchmark_batch_sizes)
    timer = None
    if fresh_timing.needed():  # this process's malloc policy slows inference after training: time elsewhere
        compact_dir = os.path.join(workdir, which)
        classes = dataset.get_dataset_info(config).num_classes
        runs = int(config.benchmark_runs)
        timed = fresh_timing.time_pair(workdir, compact_dir, input_shape, classes, batch_sizes, runs)
        timer = timed.__getitem__
    result = benchmark.compare(
        dense,
        variables,
        compact,
        compact_vars,
        macs=macs,
        input_shape=input_shape,
        batch_sizes=batch_sizes,
        runs=int(config.benchmark_runs),
        timer=timer,
    )
    result["timed_in"] = "a fresh process (pipeline/fresh_timing.py)" if timer is not None else "this process"
    for row in result["rows"]:
        logging.info(
            "benchmark batch %d: dense %.2f ms, compact %.2f ms, speed-up %.2fx",
            row["batch_size"],
            row["dense"]["median_ms"],
            row["compact"]["median_ms"],
            row["speedup"],
        )
    result["compact_model"] = which
    write_json(workdir, "benchmark.json", result)
    return result
