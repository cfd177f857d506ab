"""Compact-model latency for several ``round_to`` values, the same random pruning, timed side by side.

    python scripts/compare_round_to.py --models=resnet56,vgg16 --batch_size=64 --random_prune=0.5 \
        --round_to=1,8,latency [--json=PATH]

Per model: random variables killing ``--random_prune`` of every unit's channels (scripts/random_cut.py,
the same seed for every value), one compact model per ``round_to`` (the prune phase's own cut,
``pipeline.model_path.cut``: an int pads kept widths to multiples, 'latency' picks the widths the latency
model prices fastest at --batch_size, measuring this device's tables first if none are cached), then
the dense model and every compact one timed in turns run by run (``benchmark.time_interleaved``), so
their ratios share the machine's load. Prints per round_to: MACs (``traced.macs``), kept channels,
median ms, speed-up over dense and the MACs it adds over the first round_to.
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import random_cut  # scripts/random_cut.py, next to this script

from soft_prune_jax.measure import timing as B
from soft_prune_jax.traced import macs


def _round_to(text: str):
    if text == "latency":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SystemExit(f"--round_to entry {text!r} is invalid: expected ints >= 1 or 'latency'")
    return value


def compare(name: str, batch_size: int, input_shape, fraction: float, round_tos, seed: int, runs: int) -> dict:
    config = random_cut.config_for(name)
    config.benchmark_batch_sizes = (batch_size,)  # the batch round_to='latency' prices
    variables = random_cut.random_variables(config, input_shape, seed, fraction)
    x = B.random_inputs(batch_size, input_shape, seed)
    calls = {"dense": (random_cut.dense_apply(config, input_shape), (variables, x))}
    rows = {}
    for r in round_tos:
        config.round_to = r
        compact, compact_vars = random_cut.cut(config, variables, input_shape)
        plans = [p for p in compact.program.plans.values() if p.prunable]
        rows.setdefault("dense", {"macs": macs.count(compact.program.analysis).macs})
        calls[str(r)] = (functools.partial(lambda m, v, x: m.apply(v, x), compact), (compact_vars, x))
        rows[str(r)] = {
            "macs": macs.of_compact(compact).macs,
            "kept_channels": int(sum(len(p.kept) for p in plans)),
        }
    times = B.time_interleaved(calls, runs=runs, warmup=2)
    for key, t in times.items():
        rows[key]["median_ms"] = t["median_ms"]
        rows[key]["speedup"] = times["dense"]["median_ms"] / t["median_ms"]
        rows[key]["mac_reduction"] = rows["dense"]["macs"] / rows[key]["macs"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet56,vgg16")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--input_shape", default="32,32,3")
    parser.add_argument("--random_prune", type=float, default=0.5)
    parser.add_argument("--round_to", default="1,8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    input_shape = tuple(int(v) for v in args.input_shape.split(","))
    round_tos = [_round_to(v) for v in args.round_to.split(",")]
    out = {"device": B.device_description(), "jax": jax.__version__, "args": vars(args), "models": {}}
    for name in args.models.split(","):
        rows = compare(name, args.batch_size, input_shape, args.random_prune, round_tos, args.seed, args.runs)
        out["models"][name] = rows
        print(f"{name}, batch {args.batch_size}, random pruning {args.random_prune}, load {os.getloadavg()[0]:.1f}")
        base = rows[str(round_tos[0])]["macs"]
        for key, row in rows.items():
            print(
                f"  round_to {key:>5}: {row['macs'] / 1e6:8.1f} MMACs (x{row['mac_reduction']:.2f} fewer, "
                f"{100 * (row['macs'] / base - 1):+5.1f}% vs round_to {round_tos[0]}) "
                f"{row['median_ms']:8.2f} ms  speed-up x{row['speedup']:.2f}"
            )
    out["load_average"] = list(os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
