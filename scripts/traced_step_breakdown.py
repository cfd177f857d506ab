"""Where the traced path's SCP train step differs in cost from the built-in one, in one process taking turns.

    python scripts/traced_step_breakdown.py --model=fmnist_cnn --batch_size=128 --input_shape=28,28,1

The gradient of the training loss (cross-entropy; SCP's regulariser where masks are on) of:

* ``builtin_dense``: the registry model without masks (``fast_conv.Conv`` with its own weight-gradient
  rule, ``ops.pooling.max_pool_2x2``);
* ``builtin_scp``: the same with its ``MaskedBNReLU`` masks (today's SCP step);
* ``twin_direct``: the plain twin with the CPU choices (tests/zoo_builtin.py ``cpu_twin``:
  ``fast_conv.Conv``, VGG's ``max_pool_2x2``), applied as written (no masks: custom gradients kept);
* ``twin_autodiff_wgrad``: ``twin_direct`` with ``fast_conv.Conv(weight_grad='autodiff')``: the
  convs' weight gradients as the replay gets them, no masks;
* ``twin_replay``: the twin behind ``user.masked.MaskedModel`` (SCP masks by the traced replay, which
  inlines every custom_vjp body, so the convs' weight gradients are autodiff of the forward).

All on the same batch, timed by ``measure.benchmark.time_interleaved`` (loaded-machine medians).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--input_shape", default="28,28,1")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    from soft_prune_jax import host_memory

    host_memory.retain_freed_memory()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from configs import default
    from soft_prune_jax.measure import benchmark
    from soft_prune_jax.method.units import GUMBEL_RNG
    from soft_prune_jax.methods import get_method
    from soft_prune_jax.models import get_model, user
    from soft_prune_jax.ops import fast_conv
    from soft_prune_jax.training.state import init_variables
    from soft_prune_jax.user import masked

    shape = tuple(int(v) for v in args.input_shape.split(","))
    config = default.get_config()
    scp = get_method("scp")
    mask, reg = scp.mask_config(config), scp.regulariser(config)
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(args.batch_size, *shape), jnp.float32)
    y = jnp.asarray(rng.randint(0, 10, args.batch_size), jnp.int32)
    key = jax.random.PRNGKey(0)

    def grad_of(apply, regulariser):
        def loss(params, stats):
            logits, _ = apply({"params": params, "batch_stats": stats}, x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)) + regulariser(params)

        return lambda v: jax.grad(loss)(v["params"], v["batch_stats"])

    dense = get_model(args.model, 10, mask=None)
    bv = init_variables(dense, key, shape)
    builtin_scp = dense.clone(mask=mask)

    def builtin_apply(model):
        return lambda v, x: model.apply(v, x, train=True, rngs={GUMBEL_RNG: key}, mutable=["batch_stats"])

    um = user.build("zoo_builtin:cpu_twin", 10, {"name": args.model})
    tv = um.init(key, x[:2])
    units = masked.UnitSet.analyze(um, jax.tree.map(jnp.ones_like, tv), x[:2])
    replay = masked.MaskedModel(um, units, "soft", mask=mask)
    autodiff_conv = functools.partial(fast_conv.Conv, weight_grad="autodiff")
    plain_grads = user.build("zoo_builtin:cpu_twin", 10, {"name": args.model, "conv": autodiff_conv})
    calls = {
        "builtin_dense": (grad_of(builtin_apply(dense), lambda p: 0.0), (bv,)),
        "builtin_scp": (grad_of(builtin_apply(builtin_scp), reg), (bv,)),
        "twin_direct": (grad_of(lambda v, x: um.apply(v, x, train=True), lambda p: 0.0), (tv,)),
        "twin_autodiff_wgrad": (grad_of(lambda v, x: plain_grads.apply(v, x, train=True), lambda p: 0.0), (tv,)),
        "twin_replay": (
            grad_of(
                lambda v, x: replay.apply(v, x, train=True, rngs={GUMBEL_RNG: key}),
                lambda p: reg(units.unit_view(p)),
            ),
            (tv,),
        ),
    }
    timed = benchmark.time_interleaved(calls, runs=args.runs)
    out = {name: {m: round(t[m], 2) for m in ("median_ms", "min_ms")} for name, t in timed.items()}
    out["_"] = {"model": args.model, "batch": args.batch_size, "load_average": list(os.getloadavg())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
