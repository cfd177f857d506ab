"""A/B of a user model's fine-tuning step: the dense network under a fixed cut (how user models were
fine-tuned before) against the compact model's own training replay (compact/trainable.py).

Both run the trainer's ``train_step`` (SGD with momentum and weight decay) jitted, in one process,
taking turns step by step; the medians and their ratio are printed as JSON. The model is
examples/flax_resnet.py's ResNet (user-style: its BatchNorm synchronises over the 'batch' axis, so the
step runs under vmap over one replica, as under pmap); every prunable group keeps a random half of
its channels.

    python scripts/compact_finetune_ab.py --filters 32 --stages 2,2 --batch 64 --size 32 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from examples.flax_resnet import ResNet  # noqa: E402
from soft_prune_jax.compact.prune_model import prune_traced  # noqa: E402
from soft_prune_jax.compact.trainable import TrainableCompact  # noqa: E402
from soft_prune_jax.graph import ir  # noqa: E402
from soft_prune_jax.models.user import UserModel  # noqa: E402
from soft_prune_jax.traced import masked  # noqa: E402
from soft_prune_jax.training.state import create_train_state  # noqa: E402
from soft_prune_jax.training.steps import train_step  # noqa: E402


def _step_fn(model, variables, tx):
    state = create_train_state(jax.random.PRNGKey(3), variables, tx)

    def step(s, b):
        return train_step(s, b, model=model, tx=tx, learning_rate_fn=lambda _: 0.01, regulariser=lambda _: 0.0)

    lift = lambda t: jax.tree_util.tree_map(lambda a: a[None], t)  # noqa: E731
    return jax.jit(jax.vmap(step, axis_name="batch")), lift(state)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--stages", default="2,2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    module = ResNet(stage_sizes=tuple(int(s) for s in args.stages.split(",")), num_classes=10, num_filters=args.filters)
    user = UserModel("resnet", "linen", lambda _: module, module, "train", False)
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, args.size, args.size, 3))
    init = user.init(jax.random.PRNGKey(0), x)
    variables = {"params": init["params"], "batch_stats": init["batch_stats"]}
    units = masked.UnitSet.analyze(user, variables, x[:2])
    rng = np.random.default_rng(0)
    keep = {g.name: rng.permutation(g.size) < round(args.keep * g.size) for g in units.analysis.groups if g.prunable}

    def trace_eval(v, inputs, _):
        return ir.trace(lambda w, *xs: user.apply(w, *xs, train=False), v, *inputs)

    def trace_train(v, x, k):
        return ir.trace(lambda w, x, k: user.apply(w, x, train=True, rngs={"dropout": k}), v, x, k)

    compact, compact_vars = prune_traced(trace_eval, variables, [x[:2]], keep=keep, call_kwargs={"train": False})
    kept = {n: p.kept for n, p in compact.program.plans.items() if p.prunable}
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    under_cut = masked.MaskedModel(user, units, "fixed", fixed=units.unit_masks_of(kept))
    runs = {
        "dense_under_cut": _step_fn(under_cut, variables, tx),
        "compact": _step_fn(TrainableCompact(compact, trace_train), compact_vars, tx),
    }
    batch = {"image": x[None], "label": (jnp.arange(args.batch) % 10)[None]}
    states, times = {}, {k: [] for k in runs}
    for name, (fn, state) in runs.items():  # compile, and one warm step
        for _ in range(2):
            state, _ = fn(state, batch)
        jax.block_until_ready(state)
        states[name] = state
    for _ in range(args.steps):
        for name, (fn, _) in runs.items():
            t0 = time.perf_counter()
            states[name], metrics = fn(states[name], batch)
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    n_params = {k: int(sum(np.size(a) for a in jax.tree_util.tree_leaves(s.params))) for k, s in states.items()}
    print(
        json.dumps(
            {
                "args": vars(args),
                "median_step_ms": med,
                "dense_over_compact": med["dense_under_cut"] / med["compact"],
                "params": n_params,
                "kept_channels": {n: f"{len(k)}/{compact.program.plans[n].total}" for n, k in kept.items()},
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}",
                "loadavg": os.getloadavg(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
