"""Compact inference latency: the built-in surgery's rebuilt class vs the traced cut's jax.export artifact.

    python scripts/compact_latency_ab.py --model=fmnist_cnn --input_shape=28,28,1 --batches=1,64
    python scripts/compact_latency_ab.py --model=resnet56 --input_shape=32,32,3 --batches=1,64 --json=out.json

Issue 22's "Keep": the compact model's latency no slower than today's rebuilt class. Both come from the
same random BN statistics (about half of every unit's channels dead, ``surgery.random_variables``):
the built-in model cut by ``compact.surgery`` and its plain twin (tests/zoo_builtin.py) cut by
``prune_model`` (the pre-activation ResNets' shared BN-ReLUs kept whole, as the built-ins keep them),
saved and reloaded as the artifact. Their outputs are checked equal first; then both are timed in one
process taking turns run by run (``measure.benchmark.time_interleaved``), at each batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--input_shape", default="28,28,1")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    from soft_prune_jax import host_memory

    host_memory.retain_freed_memory()  # as launch/train.py: before JAX's backend starts
    import jax
    import jax.numpy as jnp
    import numpy as np
    import zoo_builtin

    from soft_prune_jax import prune_model
    from soft_prune_jax.compact import artifact, surgery
    from soft_prune_jax.compact.prune_model import channel_groups
    from soft_prune_jax.measure import benchmark
    from soft_prune_jax.models import get_model

    shape = tuple(int(v) for v in args.input_shape.split(","))
    builtin = get_model(args.model, 10)
    trained = surgery.random_variables(builtin, (1,) + shape, 0, 0.5)
    hand, hand_vars = surgery.prune(builtin, trained)
    plain, plain_vars = zoo_builtin.twin(args.model, 10), zoo_builtin.builtin_variables(trained)
    x = benchmark.random_inputs(2, shape, 1)
    keep = {  # the paper's unmasked shared BN-ReLUs stay whole
        g.name: np.arange(g.size)
        for g in channel_groups(plain, plain_vars, x)
        if g.prunable and any(u.name.endswith("/bn1") for u in g.units)
    }
    compact, compact_vars = prune_model(plain, plain_vars, x, keep=keep)
    directory = tempfile.mkdtemp()
    artifact.save(directory, compact, compact_vars, jax.ShapeDtypeStruct((1,) + shape, jnp.float32), overwrite=True)
    exported, exported_vars = artifact.load(directory)

    def rebuilt(v, x):
        return hand.apply(v, x, train=False)

    def traced(v, x):
        return exported.apply(v, x, train=False)

    diff = float(jnp.max(jnp.abs(rebuilt(hand_vars, x) - traced(exported_vars, x))))
    rows = []
    for b in (int(v) for v in args.batches.split(",")):
        xb = benchmark.random_inputs(b, shape, 0)
        timed = benchmark.time_interleaved(
            {"rebuilt_class": (rebuilt, (hand_vars, xb)), "traced_artifact": (traced, (exported_vars, xb))},
            runs=args.runs,
        )
        row = {"batch": b, **{k: {m: v[m] for m in ("median_ms", "min_ms")} for k, v in timed.items()}}
        row["artifact_over_class"] = timed["traced_artifact"]["median_ms"] / timed["rebuilt_class"]["median_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"model": args.model, "max_abs_logit_diff": diff, "device": benchmark.device_description(), "rows": rows}
    out["load_average"] = list(os.getloadavg())
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
