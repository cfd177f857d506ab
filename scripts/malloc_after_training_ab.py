"""Does training under a malloc policy slow inference later in the same process? One A/B per call.

    python scripts/malloc_after_training_ab.py --policy=one_arena --compact=WORKDIR/finetuned
    python scripts/malloc_after_training_ab.py --policy=four_arenas --compact=WORKDIR/finetuned
    python scripts/malloc_after_training_ab.py --policy=system --compact=WORKDIR/finetuned

Sets glibc's malloc as ``--policy`` says before JAX starts (one_arena is soft_prune_jax/host_memory.py's
policy: one arena, no mmap, no trim), times the demo network (random init) against a compact artifact
at batch 64 (interleaved medians), runs 200 jitted training steps of the demo network at batch 128,
and times the pair again. docs/RESULTS.md ("Latency as the budget") has what it found.
"""

import argparse
import ctypes
import json
import time

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
POLICIES = {
    "one_arena": [(M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)],
    "four_arenas": [(M_ARENA_MAX, 4), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)],
    "system": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=sorted(POLICIES), required=True)
    parser.add_argument("--compact", required=True, help="a compact model's artifact folder (e.g. WORKDIR/finetuned)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    for param, value in POLICIES[args.policy]:
        assert libc.mallopt(param, value) == 1, (param, value)

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from soft_prune_jax import load_artifact
    from soft_prune_jax.measure import timing
    from soft_prune_jax.models import get_model

    x = jnp.asarray(np.random.default_rng(0).standard_normal((128, 28, 28, 1)), jnp.float32)
    dense = get_model("fmnist_cnn", 10, norm=nn.BatchNorm)
    variables = jax.jit(dense.init)(jax.random.key(0), x)
    compact, compact_vars = load_artifact(args.compact)

    def pair() -> dict:
        calls = {
            "dense": (lambda v, x: dense.apply(v, x, train=False), (variables, x[:64])),
            "compact": (compact.apply, (compact_vars, x[:64])),
        }
        timed = timing.time_interleaved(calls, runs=30)
        return {name: round(t["median_ms"], 2) for name, t in timed.items()}

    def loss(params, stats, x):
        y, _ = dense.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(y**2)

    out = {"policy": args.policy, "before_training": pair()}
    step = jax.jit(jax.grad(loss))
    jax.block_until_ready(step(variables["params"], variables["batch_stats"], x))
    start = time.perf_counter()
    for _ in range(args.steps):
        grads = step(variables["params"], variables["batch_stats"], x)
    jax.block_until_ready(grads)
    out["train_step_ms"] = round((time.perf_counter() - start) / args.steps * 1e3, 1)
    out["after_training"] = pair()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
