"""Times the graph-based pruning (prune_model) on this machine.

1. Tracing + grouping a full-size ResNet-50 (built-in resnet50, 224x224x3, batch 1; variables as
   abstract shapes, so nothing is computed): the wall time of ``graph.trace`` + ``graph.analyze``.
2. The cost of prune_model's self-check (``compact.verify``) on a full-size ResNet-50 (224x224x3,
   batch 1, random variables with half of every unit's channels dead, scripts/random_cut.py):
   prune_model with check=False and check=True, first and second call in the process, alternating;
   and the wall time of the check itself (``verify.check_plans``) in each checked call.

    python3 scripts/graph_timing.py [--skip_check]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
import random_cut  # scripts/random_cut.py, next to this script

from soft_prune_jax.compact import verify
from soft_prune_jax.compact.prune_model import program_of, prune_model
from soft_prune_jax.graph import analyze, trace
from soft_prune_jax.measure import timing as benchmark
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
    model = get_model("resnet50", 1000)
    variables = random_cut.random_variables(random_cut.config_for("resnet50", 1000), (224, 224, 3), 0, 0.5)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip_check", action="store_true")
    args = parser.parse_args()
    out = {"device": benchmark.device_description(), **trace_and_group_seconds()}
    if not args.skip_check:
        out.update(self_check_seconds())
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
