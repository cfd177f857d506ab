"""Compact-model latency for several ``round_to`` values, the same random pruning, timed side by side.

    python scripts/compare_round_to.py --models=resnet56,vgg16 --batch_size=64 --random_prune=0.5 \
        --round_to=1,8,auto [--json=PATH]

Per model: random BN parameters dropping ``--random_prune`` of every masked unit's channels
(``surgery.randomize_bn``, the same seed for every value), one compact model per ``round_to``
(``surgery.prune``), then the dense model and every compact one timed in turns run by run
(``benchmark.time_interleaved``), so their ratios share the machine's load. 'auto' measures its conv
latency table first if this device has none cached (compact/align.py). Prints per round_to: MACs,
kept channels, median ms, speed-up over dense and the MACs it adds over round_to=1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax

from soft_prune_jax.compact import align, surgery
from soft_prune_jax.measure import benchmark as B
from soft_prune_jax.measure import flops
from soft_prune_jax.models import get_model
from soft_prune_jax.training.state import init_variables


def _round_to(text: str):
    if text == align.AUTO:
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SystemExit(f"--round_to entry {text!r} is invalid: expected ints >= 1 or 'auto'")
    return value


def compare(name: str, batch_size: int, input_shape, fraction: float, round_tos, seed: int, runs: int) -> dict:
    model = get_model(name, 10)
    variables = surgery.randomize_bn(init_variables(model, jax.random.key(seed), input_shape), seed, fraction)
    dense, dense_vars = model.clone(mask=None), {k: variables[k] for k in ("params", "batch_stats")}
    x = B.random_inputs(batch_size, input_shape, seed)
    apply = lambda m, v, x: m.apply(v, x, train=False)  # noqa: E731
    calls = {"dense": (functools.partial(apply, dense), (dense_vars, x))}
    rows = {"dense": {"macs": flops.count(dense, None, input_shape).macs}}
    for r in round_tos:
        value = align.Auto(input_shape=input_shape, batch_size=batch_size) if r == align.AUTO else r
        compact, compact_vars = surgery.prune(model, variables, round_to=value)
        plans = surgery.plan(model, variables, round_to=value)
        calls[str(r)] = (functools.partial(apply, compact), (compact_vars, x))
        rows[str(r)] = {
            "macs": flops.count(compact, None, input_shape).macs,
            "kept_channels": int(sum(len(p.kept) for p in plans.values())),
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
    parser.add_argument("--round_to", default="1,8,auto")
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
