"""How well the latency model (scp/latency_model.py) predicts whole compact models, and what widths
chosen by latency gain over fixed rounding, on this machine.

For each model: its latency model at --batch (tables from the per-device cache, measured on first
use, plus the dense model's median), then --cuts random cuts (random BN parameters dropping a random
fraction of each unit's channels, scripts/random_cut.py), each cut as the prune phase cuts
(``pipeline.model_path.cut``) at round_to=1, 8 and 'latency'. The dense model and the three compact ones
are timed taking turns (medians); each compact model's estimates are set beside its measurement: the
interpolated tables' (what the controller steers during training) and the exact widths' (what landing
reads), in milliseconds and as ratios to the dense model timed beside them. Raw records go to --out.

    python scripts/latency_model_error.py --models=fmnist_cnn,resnet56 --cuts=12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soft_prune_jax import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # as the launchers: before JAX's backend starts

import numpy as np  # noqa: E402
import random_cut  # noqa: E402  (scripts/random_cut.py, next to this script)

from soft_prune_jax.compact import layer_timings as CL  # noqa: E402
from soft_prune_jax.measure import timing as benchmark  # noqa: E402
from soft_prune_jax.pipeline import latency_setup as PL  # noqa: E402
from soft_prune_jax.pipeline import model_path as traced  # noqa: E402
from soft_prune_jax.scp import latency_model as L  # noqa: E402
from soft_prune_jax.traced import graph_cost as C  # noqa: E402
from soft_prune_jax.traced.graph_ops import graph_ops  # noqa: E402

SHAPES = {"fmnist_cnn": (28, 28, 1), "resnet56": (32, 32, 3)}
ARMS = (("r1", 1), ("r8", 8), ("latency", "latency"))


def latency_model(config, input_shape, variables, batch: int):
    """(cost model, latency model, exact per-layer timing) of the graph, as the pipeline builds them
    under a latency budget (the landing reads each layer at its exact widths)."""
    _, units = traced.setup(config, input_shape)
    cost = C.cost_model(units)
    ops = graph_ops(units.analysis)
    dense_ms = PL.dense_ms(random_cut.dense_apply(config, input_shape), variables, input_shape, batch)
    lm = CL.latency_model(cost, ops, dense_ms, batch=batch)
    return cost, lm, CL.layer_ms(cost, ops, CL.Timings(), batch, "float32")


def measure_cut(config, input_shape, variables, cut: int, batch: int, runs: int) -> tuple[dict, dict]:
    """({arm: widths}, {arm or 'dense': timings}) of one random cut at each round_to."""
    calls = {"dense": (random_cut.dense_apply(config, input_shape), variables)}
    widths = {}
    for label, round_to in ARMS:
        config.round_to = round_to
        compact, compact_vars = random_cut.cut(config, variables, input_shape)
        widths[label] = {n: len(p.kept) for n, p in compact.program.plans.items() if p.prunable}
        calls[label] = (lambda v, x, c=compact: c.apply(v, x), compact_vars)
    x = benchmark.random_inputs(batch, input_shape, cut)
    return widths, benchmark.time_interleaved({k: (fn, (v, x)) for k, (fn, v) in calls.items()}, runs=runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist_cnn,resnet56")
    parser.add_argument("--cuts", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default="docs/results/latency_model_error.json")
    args = parser.parse_args()
    result = {
        "device": benchmark.device_description(),
        "batch": args.batch,
        "load_before": os.getloadavg(),
        "models": {},
    }
    for name in args.models.split(","):
        input_shape = SHAPES[name]
        config = random_cut.config_for(name)
        config.benchmark_batch_sizes = (args.batch,)  # the batch round_to='latency' prices
        start = time.time()
        cost, lm, layer_ms = latency_model(
            config, input_shape, random_cut.random_variables(config, input_shape, 0, 0.0), args.batch
        )
        rows = []
        rng = np.random.default_rng(0)
        for cut in range(args.cuts):
            fraction = float(rng.uniform(0.2, 0.7))
            variables = random_cut.random_variables(config, input_shape, cut, fraction)
            widths, timed = measure_cut(config, input_shape, variables, cut, args.batch, args.runs)
            row = {"cut": cut, "fraction": fraction, "dense_ms": timed["dense"]["median_ms"], "compact": {}}
            for label, _ in ARMS:
                estimate = float(L.latency_of_widths(cost, lm, widths[label]))
                row["compact"][label] = {
                    "widths": widths[label],
                    "measured_ms": timed[label]["median_ms"],
                    "estimated_ms": estimate,  # interpolated tables: what the controller steers in training
                    "estimated_exact_ms": L.latency_at(cost, lm, widths[label], layer_ms),  # what landing reads
                }
            rows.append(row)
            print(name, cut, json.dumps({k: round(v["measured_ms"], 2) for k, v in row["compact"].items()}), flush=True)
        errors = [
            (c["estimated_ms"] - c["measured_ms"]) / c["measured_ms"] for r in rows for c in r["compact"].values()
        ]
        exact = [
            (c["estimated_exact_ms"] - c["measured_ms"]) / c["measured_ms"] for r in rows for c in r["compact"].values()
        ]
        # The same errors as ratios to the dense model: the estimate over the tables' dense latency
        # against the measurement over the dense model timed beside it. Landing and the budget work in
        # these ratios; a machine whose speed drifts between building the tables and timing the cuts
        # moves the errors in milliseconds above, not these.
        ratio = [
            (c["estimated_exact_ms"] / lm.dense_ms) / (c["measured_ms"] / r["dense_ms"]) - 1
            for r in rows
            for c in r["compact"].values()
        ]
        speedups = {
            label: float(np.median([r["dense_ms"] / r["compact"][label]["measured_ms"] for r in rows]))
            for label, _ in ARMS
        }
        result["models"][name] = {
            "table_dense_ms": lm.dense_ms,
            "table_rest_ms": lm.rest_ms,
            "build_s": time.time() - start,
            "median_abs_error": float(np.median(np.abs(errors))),
            "max_abs_error": float(np.max(np.abs(errors))),
            "median_abs_error_exact": float(np.median(np.abs(exact))),
            "max_abs_error_exact": float(np.max(np.abs(exact))),
            "median_abs_ratio_error_exact": float(np.median(np.abs(ratio))),
            "max_abs_ratio_error_exact": float(np.max(np.abs(ratio))),
            "table_scale": lm.scale,
            "median_speedup": speedups,
            "cuts": rows,
        }
        print(name, json.dumps({k: v for k, v in result["models"][name].items() if k != "cuts"}), flush=True)
        result["load_after"] = os.getloadavg()
        _write(args.out, result)  # after each model: a long run killed later keeps what it measured


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
