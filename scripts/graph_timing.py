"""Times the graph-based pruning (prune_model) on this machine.

1. Tracing + grouping a full-size ResNet-50 (built-in resnet50, 224x224x3, batch 1; variables as
   abstract shapes, so nothing is computed): the wall time of ``graph.trace`` + ``graph.analyze``.
2. The cost of prune_model's self-check (``compact.verify``) on a full-size ResNet-50 (224x224x3,
   batch 1, random variables with half of every BN's channels dead): prune_model with check=False
   and check=True, first and second call in the process, alternating; and the wall time of the check
   itself (``verify.check_plans``) in each checked call.
3. Latency of the compact ResNet-56 built by ``prune_model`` against the hand-built compact class
   of ``surgery.prune`` with the same kept channels (batch 64, median of interleaved runs), and
   the largest difference between their outputs.

    python3 scripts/graph_timing.py [--runs 30] [--skip_latency] [--skip_check]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from soft_prune_jax.compact import structure, surgery, verify
from soft_prune_jax.compact.prune_model import program_of, prune_model
from soft_prune_jax.graph import analyze, trace
from soft_prune_jax.measure import benchmark
from soft_prune_jax.models import get_model
from soft_prune_jax.ops import fast_conv


def trace_and_group_seconds(repeats: int = 3) -> dict:
    model = get_model("resnet50", 1000)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3), np.float32), train=False)
    )
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with fast_conv.flax_conv_formulation("xla"):
            g = trace(lambda v, x: model.apply(v, x, train=False), variables, x)
        a = analyze(g, strip=1)
        times.append(time.perf_counter() - start)
    return {
        "resnet50_trace_and_group_s": min(times),
        "all_s": times,
        "equations": len(g.eqns),
        "groups": len(a.groups),
        "prunable": sum(grp.prunable for grp in a.groups),
        "units": len(a.units),
    }


def self_check_seconds() -> dict:
    model = get_model("resnet50", 1000).clone(mask=None)  # the user-model case: BN -> ReLU units, no masks
    variables = surgery.random_variables(model, (1, 224, 224, 3), seed=0, prune_fraction=0.5)
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    times = {False: [], True: []}
    inside = []  # the check's own wall time: the check-off call also pays one-time costs the check reuses
    check_plans = verify.check_plans

    def timed_check_plans(*args, **kwargs):
        start = time.perf_counter()
        out = check_plans(*args, **kwargs)
        inside.append(time.perf_counter() - start)
        return out

    verify.check_plans = timed_check_plans
    try:
        for check in (False, True, False, True):  # first calls compile; second calls reuse the op caches
            start = time.perf_counter()
            compact, _ = prune_model(model, variables, x, train=False, check=check)
            times[check].append(time.perf_counter() - start)
    finally:
        verify.check_plans = check_plans
    plans = program_of(compact).plans.values()
    return {
        "resnet50_prune_model_s": {"check_off": times[False], "check_on": times[True]},
        "resnet50_self_check_s": [on - off for on, off in zip(times[True], times[False])],
        "resnet50_check_plans_s": inside,
        "resnet50_groups_cut": sum(len(p.kept) < p.total for p in plans),
        "resnet50_groups_failing_check": sum(p.reason.startswith("self-check") for p in plans),
    }


def latency(runs: int) -> dict:
    model = get_model("resnet56", 10)
    variables = surgery.random_variables(model, (1, 32, 32, 3), seed=0, prune_fraction=0.5)
    hand, hand_vars = surgery.prune(model, variables)
    kept = {name: p.kept for name, p in surgery.plan(model, variables).items()}
    x = np.zeros((2, 32, 32, 3), np.float32)
    # surgery's compact class has no mask ops (mask=None); prune the same mask-free network, so both
    # compute the same thing (the kept channels are those the masks keep, so the masks are all ones).
    model = model.clone(mask=None)
    probe, _ = prune_model(model, variables, x, train=False)
    written = {g.name for g in structure.describe(model).groups}
    keep = {}
    for grp in program_of(probe).analysis.groups:
        if grp.prunable:  # the same widths: structure's groups as planned, the rest (unmasked units) whole
            keep[grp.name] = kept[grp.name] if grp.name in written else np.arange(grp.size)
    found, found_vars = prune_model(model, variables, x, keep=keep, train=False)
    batch = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype(np.float32)
    calls = {
        "hand_built": (lambda v, x: hand.apply(v, x, train=False), (hand_vars, batch)),
        "prune_model": (lambda v, x: found.apply(v, x, train=False), (found_vars, batch)),
    }
    result = benchmark.time_interleaved(calls, runs=runs, warmup=3)
    ratio = result["prune_model"]["median_ms"] / result["hand_built"]["median_ms"]
    y1 = jax.jit(calls["hand_built"][0])(hand_vars, batch)
    y2 = jax.jit(calls["prune_model"][0])(found_vars, batch)
    return {
        "resnet56_batch64": result,
        "prune_model_over_hand_built": ratio,
        "max_abs_diff": float(np.max(np.abs(np.asarray(y1) - np.asarray(y2)))),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip_latency", action="store_true")
    parser.add_argument("--skip_check", action="store_true")
    args = parser.parse_args()
    out = {"device": benchmark.device_description(), **trace_and_group_seconds()}
    if not args.skip_check:
        out.update(self_check_seconds())
    if not args.skip_latency:
        out.update(latency(args.runs))
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
