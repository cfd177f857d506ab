"""The experiment as phases over one workdir: train -> prune -> finetune -> evaluate -> benchmark -> report.

Each phase reads what earlier phases left in WORKDIR and writes its own outputs, so any phase can
run alone on an existing workdir (``--phases=evaluate,report``):

  train      joint training from scratch (soft masks for 'scp')   checkpoints/train/, train.json
  prune      surgery.prune (global |scale| masks for 'slimming')   compact/ (export.save_compact), prune.json
  finetune   the compact model (mask=None), LR finetune_learning_rate, the same schedule shape
             over finetune_epochs (0 = skipped)                    checkpoints/finetune/, finetuned/, finetune.json
  evaluate   test accuracy of the trained (hard-masked) and compact models, and the largest
             |logit difference| between them before fine-tuning   evaluate.json
  benchmark  median latency of the dense architecture and the final compact model   benchmark.json
  report     everything above plus MACs, parameters, channels     report.json, report.md, widths.png
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from soft_prune_jax.measure import benchmark, flops, report

from soft_prune_jax.training import config_validation

from soft_prune_jax.compact import export, surgery
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.method import masks as M
from soft_prune_jax.training import train as T

PHASES = ("train", "prune", "finetune", "evaluate", "benchmark", "report")
COMPACT_DIR, FINETUNED_DIR = "compact", "finetuned"


def parse_phases(text: str | Sequence[str]) -> tuple[str, ...]:
    """'train,prune' -> ('train', 'prune'), in pipeline order; unknown names are a clear error."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in names if p not in PHASES]
    if unknown or not names:
        raise ValueError(f"phases={text!r} is invalid: expected a comma-separated subset of {','.join(PHASES)}")
    return tuple(p for p in PHASES if p in names)


# ---------------------------------------------------------------------------------------------
# Workdir files.
# ---------------------------------------------------------------------------------------------

def _write_json(workdir: str, name: str, data: Mapping[str, Any]) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
    os.replace(path + ".tmp", path)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _read_json(workdir: str, name: str, *, needed_by: str) -> dict:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        producer = name.split(".")[0]
        raise FileNotFoundError(f"{path} does not exist: the {needed_by} phase needs the {producer} phase's "
                                f"output; run --phases={producer} first")
    with open(path) as f:
        return json.load(f)


def trained_variables(config, workdir: str) -> dict:
    """params and batch_stats of the finished train phase (its newest checkpoint)."""
    checkpointer = ckpt_lib.TrainCheckpointer(ckpt_lib.checkpoint_dir(workdir, "train"),
                                              max_to_keep=config.keep_checkpoints)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"no train checkpoint in {checkpointer.directory}: run --phases=train first")
        expected = _read_json(workdir, "train.json", needed_by="prune/evaluate")["steps"]
        if step != expected:
            raise ValueError(f"the train checkpoint is at step {step}, expected the finished run's {expected}: "
                             "rerun --phases=train to complete it")
        state = checkpointer.restore_raw(step)
    finally:
        checkpointer.close()
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def final_compact(workdir: str):
    """(model, variables, which): the fine-tuned compact model if there is one, else the pruned one."""
    name = FINETUNED_DIR if os.path.isdir(os.path.join(workdir, FINETUNED_DIR)) else COMPACT_DIR
    model, variables = export.load_compact(os.path.join(workdir, name))
    return model, variables, name


# ---------------------------------------------------------------------------------------------
# Masks and counts.
# ---------------------------------------------------------------------------------------------

def slimming_masks(params, keep_ratio: float) -> dict[str, np.ndarray]:
    """Network Slimming: one global |scale| threshold keeping ``keep_ratio`` of the masked channels."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"slimming.target_channel_ratio={keep_ratio!r} is invalid: expected a number in (0, 1]")
    layers = {name: np.abs(np.asarray(layer["scale"])) for name, layer in M.masked_layers(params).items()}
    if not layers:
        raise ValueError("the model has no masked BN layers to prune: expected a registry model")
    scores = np.concatenate(list(layers.values()))
    keep = max(1, int(round(keep_ratio * scores.size)))
    threshold = np.sort(scores)[::-1][keep - 1]
    return {name: (score >= threshold).astype(np.float32) for name, score in layers.items()}


def slimming_masks_for_macs(model, variables, input_shape, target_macs_ratio: float, round_to: int = 1,
                            iterations: int = 30) -> dict[str, np.ndarray]:
    """Network Slimming masks keeping the most channels whose compact model has at most
    ``target_macs_ratio`` of the dense MACs (bisection on the global keep ratio; MACs grow with it)."""
    from soft_prune_jax.compact.structure import describe

    dense_macs = flops.count(model, variables, input_shape).macs
    rebuild = describe(model).rebuild

    def macs_ratio(keep_ratio: float) -> float:
        masks = slimming_masks(variables["params"], keep_ratio)
        plans = surgery.plan(model, variables, round_to=round_to, masks=masks)
        compact = rebuild({name: p.kept for name, p in plans.items()})
        return flops.count(compact, None, input_shape).macs / dense_macs

    low, high = 0.0, 1.0  # macs_ratio(high) is the dense model's; find the largest keep ratio under target
    for _ in range(iterations):
        mid = (low + high) / 2
        if mid > 0 and macs_ratio(mid) <= target_macs_ratio:
            low = mid
        else:
            high = mid
    return slimming_masks(variables["params"], max(low, 1e-6))


def mask_override(config, model, variables) -> Optional[dict[str, np.ndarray]]:
    """Masks that replace the model's own hard masks in surgery: Network Slimming's, else None."""
    if config.method != "slimming":
        return None
    target_macs = config.slimming.get("target_macs_ratio")
    if target_macs is not None:
        from soft_prune_jax.training import data

        input_shape = tuple(data.get_dataset_info(config).input_shape)
        return slimming_masks_for_macs(model, variables, input_shape, float(target_macs), int(config.round_to))
    return slimming_masks(variables["params"], float(config.slimming.target_channel_ratio))


def effective_masks(config, model, variables) -> dict[str, np.ndarray]:
    """The 0/1 masks whose hard-masked network the compact model reproduces exactly."""
    override = mask_override(config, model, variables)
    return surgery.masks_of(surgery.plan(model, variables, round_to=int(config.round_to), masks=override))


def make_macs_fn(model, input_shape) -> Callable[[Mapping[str, Any]], dict]:
    """variables -> {'macs', 'ratio'}: MACs of the network the current hard masks leave (for progress)."""
    dense_macs = flops.count(model, None, input_shape).macs

    def macs_fn(variables):
        compact, compact_vars = surgery.prune(model, variables)
        macs = flops.count(compact, compact_vars, input_shape).macs
        return {"macs": macs, "ratio": macs / dense_macs}
    return macs_fn


# ---------------------------------------------------------------------------------------------
# Phases.
# ---------------------------------------------------------------------------------------------

def train_phase(config, workdir, *, dataset, devices=None) -> dict:
    model = T.create_model(config)
    info = dataset.get_dataset_info(config)
    macs_fn = make_macs_fn(model, info.input_shape) if T.mask_config(config) is not None else None
    phase = T.Phase("train", model, float(config.learning_rate), int(config.num_epochs),
                    regulariser=T.create_regulariser(config), mask=T.mask_config(config))
    result = T.fit(config, workdir, phase, dataset=dataset, devices=devices, macs_fn=macs_fn)
    summary = {"steps": result.steps, "train_metrics": result.train_metrics, "validation": result.validation}
    _write_json(workdir, "train.json", summary)
    return summary


def prune_phase(config, workdir, **_) -> dict:
    model = T.create_model(config)
    variables = trained_variables(config, workdir)
    override = mask_override(config, model, variables)
    plans = surgery.plan(model, variables, round_to=int(config.round_to), masks=override)
    compact, compact_vars = surgery.prune(model, variables, round_to=int(config.round_to), masks=override)
    # overwrite: rerunning the phase on its own recomputes the same compact model from the same checkpoint.
    export.save_compact(os.path.join(workdir, COMPACT_DIR), compact, compact_vars, overwrite=True,
                           extra={"source": "prune", "method": config.method, "round_to": int(config.round_to)})
    summary = {
        "kept_channels": {name: len(p.kept) for name, p in plans.items()},
        "total_channels": {name: p.total for name, p in plans.items()},
        # METHOD.md section 3: a plain chain never loses its last channel; say where that happened.
        "kept_by_fallback": sorted(name for name, p in plans.items() if p.kept_by_fallback),
    }
    _write_json(workdir, "prune.json", summary)
    return summary


def finetune_phase(config, workdir, *, dataset, devices=None) -> dict:
    epochs = int(config.finetune_epochs)
    if epochs == 0:
        summary = {"skipped": True, "reason": "finetune_epochs=0"}
        _write_json(workdir, "finetune.json", summary)
        return summary
    model, variables = export.load_compact(os.path.join(workdir, COMPACT_DIR))
    # The same schedule shape: the boundaries keep their fraction of the run.
    scale = epochs / float(config.num_epochs)
    phase = T.Phase("finetune", model, float(config.finetune_learning_rate), epochs,
                    lr_boundaries=tuple(b * scale for b in config.lr_boundaries), variables=variables,
                    seed_offset=1)
    result = T.fit(config, workdir, phase, dataset=dataset, devices=devices)
    export.save_compact(os.path.join(workdir, FINETUNED_DIR), model, result.state.variables, overwrite=True,
                           extra={"source": "finetune", "epochs": epochs})
    summary = {"skipped": False, "steps": result.steps, "train_metrics": result.train_metrics,
               "validation": result.validation}
    _write_json(workdir, "finetune.json", summary)
    return summary


def _compare_step(pair, batch, *, reference: Callable, compact_model, axis_name=T.AXIS):
    """Accuracy sums of both models and the largest |logit difference| over real examples."""
    ref_logits = reference(pair["reference"], batch["image"])
    new_logits = compact_model.apply(pair["compact"], batch["image"], train=False)
    weight = batch["mask"]
    labels = batch["label"]
    diff = jnp.max(jnp.abs(ref_logits - new_logits), axis=-1) * weight
    out = {
        "reference_correct": jnp.sum((jnp.argmax(ref_logits, -1) == labels) * weight),
        "compact_correct": jnp.sum((jnp.argmax(new_logits, -1) == labels) * weight),
        "count": jnp.sum(weight),
    }
    out = lax.psum(out, axis_name)
    out["max_logit_diff"] = lax.pmax(jnp.max(diff), axis_name)
    return out


def evaluate_phase(config, workdir, *, dataset, devices=None) -> dict:
    parallel = T.Parallel(config.parallel, devices)
    T.check_global_batch(config.eval_batch_size, parallel.num_local_devices * jax.process_count(),
                         what="eval_batch_size")
    model = T.create_model(config)
    variables = trained_variables(config, workdir)
    masks = effective_masks(config, model, variables)
    compact, compact_vars = export.load_compact(os.path.join(workdir, COMPACT_DIR))

    def reference(v, x):  # the trained network under the masks the surgery cut by
        return surgery.apply_with_masks(model, v, masks, x)

    step = parallel.map(functools.partial(_compare_step, reference=reference, compact_model=compact))
    pair = parallel.replicate({"reference": variables, "compact": compact_vars})
    totals = None
    for batch in dataset.eval_iterator(config, local_devices=parallel.num_local_devices, split="test"):
        out = step(pair, parallel.shard_batch(batch))
        out = parallel.unreplicate(out)
        if totals is None:
            totals = out
        else:
            totals = {k: (max if k == "max_logit_diff" else np.add)(totals[k], out[k]) for k in out}
    count = float(totals["count"])
    summary = {
        "test_examples": int(count),
        "trained_hard_masked_accuracy": float(totals["reference_correct"]) / count,
        "compact_accuracy_before_finetune": float(totals["compact_correct"]) / count,
        "max_abs_logit_diff_before_finetune": float(totals["max_logit_diff"]),
    }
    if os.path.isdir(os.path.join(workdir, FINETUNED_DIR)):
        tuned, tuned_vars = export.load_compact(os.path.join(workdir, FINETUNED_DIR))
        p_eval = parallel.map(functools.partial(T.eval_step, model=tuned))
        batches = dataset.eval_iterator(config, local_devices=parallel.num_local_devices, split="test")
        summary["compact_accuracy_after_finetune"] = T.evaluate(parallel, p_eval, parallel.replicate(tuned_vars),
                                                                batches)["accuracy"]
    summary["final_accuracy"] = summary.get("compact_accuracy_after_finetune",
                                            summary["compact_accuracy_before_finetune"])
    logging.info("evaluate: %s", summary)
    _write_json(workdir, "evaluate.json", summary)
    return summary


def benchmark_phase(config, workdir, *, dataset, **_) -> dict:
    """Latency (median of config.benchmark_runs) of the dense architecture and the final compact model.

    ``benchmark.compare`` also reports each model's FLOP rate against the machine's sgemm rate, so a
    speed-up (or its absence) caused by a slow conv shape cannot hide.
    """
    # The dense architecture with the trained weights (masks off): what pruning is measured against.
    dense = T.create_model(config, mask=None)
    variables = trained_variables(config, workdir)
    compact, compact_vars, which = final_compact(workdir)
    result = benchmark.compare(dense, variables, compact, compact_vars,
                               input_shape=tuple(dataset.get_dataset_info(config).input_shape),
                               batch_sizes=tuple(int(b) for b in config.benchmark_batch_sizes),
                               runs=int(config.benchmark_runs))
    for row in result["rows"]:
        logging.info("benchmark batch %d: dense %.2f ms, compact %.2f ms, speed-up %.2fx", row["batch_size"],
                     row["dense"]["median_ms"], row["compact"]["median_ms"], row["speedup"])
    result["compact_model"] = which
    _write_json(workdir, "benchmark.json", result)
    return result


def report_phase(config, workdir, *, dataset, **_) -> dict:
    input_shape = tuple(dataset.get_dataset_info(config).input_shape)
    dense_model = T.create_model(config)
    variables = trained_variables(config, workdir)
    compact, compact_vars, which = final_compact(workdir)
    comparison = report.compare(flops.count(dense_model, variables, input_shape),
                                flops.count(compact, compact_vars, input_shape))
    out = {
        "model": config.model, "dataset": config.dataset, "method": config.method,
        "macs_convention": "multiply-accumulates per example of conv and dense layers (FLOPs = 2 x MACs)",
        "pruning": report.to_dict(comparison),
        "compact_model": which,
        "config": ckpt_lib.config_to_dict(config),
    }
    for name in ("train", "prune", "finetune", "evaluate", "benchmark", "timings"):
        path = os.path.join(workdir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                out[name] = json.load(f)
    _write_json(workdir, "report.json", out)
    plot = None
    if jax.process_index() == 0:
        plot = report.plot_widths(os.path.join(workdir, "widths.png"), comparison,
                                  title=f"{config.model} on {config.dataset}, {config.method}")
        with open(os.path.join(workdir, "report.md"), "w") as f:
            f.write(_markdown(config, out, report.format_table(comparison), plot))
    return out


def _markdown(config, out: Mapping[str, Any], table: str, plot: Optional[str]) -> str:
    s = out["pruning"]["summary"]
    lines = [f"# {config.model} on {config.dataset} ({config.method})", "", "| metric | value |", "|---|---|"]
    ev = out.get("evaluate")
    if ev:
        for key, label in (("trained_hard_masked_accuracy", "trained (hard masks)"),
                           ("compact_accuracy_before_finetune", "compact before fine-tuning"),
                           ("compact_accuracy_after_finetune", "compact after fine-tuning")):
            if key in ev:
                lines.append(f"| test accuracy, {label} | {100 * ev[key]:.2f}% |")
        diff = ev["max_abs_logit_diff_before_finetune"]
        lines.append(f"| max abs logit difference, hard-masked vs compact | {diff:.3g} |")
    lines += [f"| MACs per example | {s['dense_macs']:,} -> {s['compact_macs']:,} (-{s['macs_reduction_pct']:.2f}%) |",
              f"| parameters | {s['dense_params']:,} -> {s['compact_params']:,} (-{s['params_reduction_pct']:.2f}%) |",
              f"| channels of masked layers | {s['total_channels']:,} -> {s['kept_channels']:,} "
              f"(-{s['channel_reduction_pct']:.2f}%) |"]
    for row in (out.get("benchmark") or {}).get("rows", []):
        lines.append(f"| latency at batch {row['batch_size']} (median, {out['benchmark']['device']}) | "
                     f"dense {row['dense']['median_ms']:.2f} ms, compact {row['compact']['median_ms']:.2f} ms, "
                     f"speed-up {row['speedup']:.2f}x (MACs ratio {out['benchmark']['mac_ratio']:.2f}x) |")
    timings = out.get("timings") or {}
    if timings:
        lines.append("| wall time per phase (s) | " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + " |")
    fallback = (out.get("prune") or {}).get("kept_by_fallback")
    if fallback:
        lines += ["", f"Layers that would have lost every channel kept their lowest-pi channel: {', '.join(fallback)}."]
    lines += ["", "MACs: " + out["macs_convention"] + ".", "", "```", table, "```"]
    if plot:
        lines += ["", f"![kept channels per layer]({os.path.basename(plot)})"]
    return "\n".join(lines) + "\n"


_RUNNERS = {"train": train_phase, "prune": prune_phase, "finetune": finetune_phase, "evaluate": evaluate_phase,
            "benchmark": benchmark_phase, "report": report_phase}


def run(config, workdir: str, phases: str | Sequence[str] = PHASES, *, dataset=None,
        devices: Optional[Sequence[jax.Device]] = None) -> dict:
    """Validates the config, records it in the workdir (refusing a different one) and runs ``phases``."""
    phases = parse_phases(phases)
    config_validation.validate(config, num_devices=len(devices) * jax.process_count() if devices else None)
    ckpt_lib.ensure_workdir_config(workdir, config)
    from soft_prune_jax.training.distributed import sync
    sync("workdir config recorded")
    dataset = dataset if dataset is not None else T.default_dataset()
    results = {}
    for name in phases:
        logging.info("phase %s (workdir %s)", name, workdir)
        start = time.perf_counter()
        results[name] = _RUNNERS[name](config, workdir, dataset=dataset, devices=devices)
        _record_seconds(workdir, name, time.perf_counter() - start)
        sync(f"phase {name} done")  # multi-host: process 0's JSON exists before any process reads it
    return results


def _record_seconds(workdir: str, phase: str, seconds: float) -> None:
    """WORKDIR/timings.json: wall seconds of the latest run of each phase (the report shows them)."""
    path = os.path.join(workdir, "timings.json")
    timings = {}
    if os.path.exists(path):
        with open(path) as f:
            timings = json.load(f)
    timings[phase] = round(seconds, 2)
    _write_json(workdir, "timings.json", timings)
