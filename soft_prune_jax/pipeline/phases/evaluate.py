"""The evaluate phase: test accuracy (top-1, and top-5 with >= 5 classes) of the trained hard-masked
network and of the compact model before and after fine-tuning, and the largest |logit difference|
between the first two -- surgery's exactness on real data (evaluate.json)."""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from soft_prune_jax.pipeline import model_path
from soft_prune_jax.pipeline.records import write_json
from soft_prune_jax.pipeline.workdir import COMPACT_DIR, FINETUNED_DIR, has_finetuned, load_model_dir, trained_variables
from soft_prune_jax.training.eval_loop import evaluate, rates
from soft_prune_jax.training.parallel import Parallel, check_global_batch
from soft_prune_jax.training.steps import AXIS, classification_sums, eval_step


def compare_step(pair, batch, *, reference: Callable, compact_model, axis_name=AXIS):
    """``classification_sums`` of both models and the largest |logit difference| over real examples."""
    ref_logits = reference(pair["reference"], batch["image"])
    new_logits = compact_model.apply(pair["compact"], batch["image"], train=False)
    weight, labels = batch["mask"], batch["label"]
    sums = {
        "reference": classification_sums(ref_logits, labels, weight),
        "compact": classification_sums(new_logits, labels, weight),
    }
    diff = jnp.max(jnp.abs(ref_logits - new_logits), axis=-1) * weight
    return lax.psum(sums, axis_name), lax.pmax(jnp.max(diff), axis_name)


def _with_top5(summary: dict, name: str, top5_name: str, result: dict) -> None:
    summary[name] = result["accuracy"]
    if "top5_accuracy" in result:
        summary[top5_name] = result["top5_accuracy"]


def evaluate_phase(config, workdir, *, dataset, devices=None) -> dict:
    parallel = Parallel(config.parallel, devices)
    check_global_batch(config.eval_batch_size, parallel.num_local_devices * jax.process_count(), what="eval_batch_size")
    variables = trained_variables(config, workdir)
    input_shape = dataset.get_dataset_info(config).input_shape
    # the trained network under the cut prune chose (fixed 0/1 masks at the units), and the reloaded artifact
    reference, compact, compact_vars = model_path.evaluation_pair(
        config, workdir, input_shape, os.path.join(workdir, COMPACT_DIR)
    )

    step = parallel.map(functools.partial(compare_step, reference=reference, compact_model=compact))
    pair = parallel.replicate({"reference": variables, "compact": compact_vars})
    totals, max_diff = None, 0.0
    for batch in dataset.eval_iterator(config, local_devices=parallel.num_local_devices, split="test"):
        # Full f32 precision: on a GPU the default (TF32) would add its own rounding to the logit
        # difference that proves the cut exact. A no-op on the CPU.
        with jax.default_matmul_precision("highest"):
            sums, diff = parallel.unreplicate(step(pair, parallel.shard_batch(batch)))
        totals = sums if totals is None else jax.tree_util.tree_map(np.add, totals, sums)
        max_diff = max(max_diff, float(diff))
    reference_rates, compact_rates = rates(totals["reference"]), rates(totals["compact"])
    summary = {"test_examples": reference_rates["count"], "max_abs_logit_diff_before_finetune": max_diff}
    _with_top5(summary, "trained_hard_masked_accuracy", "trained_hard_masked_top5_accuracy", reference_rates)
    _with_top5(summary, "compact_accuracy_before_finetune", "compact_top5_accuracy_before_finetune", compact_rates)
    final = compact_rates
    if has_finetuned(workdir):
        tuned, tuned_vars = load_model_dir(os.path.join(workdir, FINETUNED_DIR))
        p_eval = parallel.map(functools.partial(eval_step, model=tuned))
        batches = dataset.eval_iterator(config, local_devices=parallel.num_local_devices, split="test")
        final = evaluate(parallel, p_eval, parallel.replicate(tuned_vars), batches)
        _with_top5(summary, "compact_accuracy_after_finetune", "compact_top5_accuracy_after_finetune", final)
    _with_top5(summary, "final_accuracy", "final_top5_accuracy", final)
    logging.info("evaluate: %s", summary)
    write_json(workdir, "evaluate.json", summary)
    return summary
