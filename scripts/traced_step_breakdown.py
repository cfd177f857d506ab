"""Where the SCP train step's time goes on the traced path, in one process taking turns.

    python scripts/traced_step_breakdown.py --model=fmnist_cnn --batch_size=128 --input_shape=28,28,1

The gradient of the training loss (cross-entropy; SCP's regulariser where masks are on) of the
registry model (``get_model``: on a CPU ``fast_conv.Conv``, VGG's ``ops.pooling.max_pool_2x2``; BN
unsynchronised, as one process without a mapped axis):

* ``dense``: applied as written (no masks: the convs' own weight-gradient rule kept);
* ``dense_autodiff_wgrad``: the same with ``fast_conv.Conv(weight_grad='autodiff')``: the convs'
  weight gradients as the replay gets them, no masks;
* ``scp_replay``: the model behind ``traced.masked.MaskedModel`` (SCP masks by the traced replay, which
  inlines every custom_vjp body, so the convs' weight gradients are autodiff of the forward): the
  pipeline's SCP train step.

So ``scp_replay / dense`` is what SCP costs, and ``dense_autodiff_wgrad / dense`` the part of it that
comes from losing the custom weight gradients. All on the same batch, timed by
``measure.timing.time_interleaved`` (loaded-machine medians).
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
    sys.path.insert(0, ROOT)
    from soft_prune_jax import host_memory

    host_memory.retain_freed_memory()
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from configs import default
    from soft_prune_jax.measure import timing as benchmark
    from soft_prune_jax.models import user
    from soft_prune_jax.ops import fast_conv
    from soft_prune_jax.pruners import get_method
    from soft_prune_jax.scp.masks import GUMBEL_RNG
    from soft_prune_jax.traced import masked

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

    model = user.build(args.model, 10, {"norm": nn.BatchNorm})
    variables = model.init(key, x[:2])
    units = masked.UnitSet.analyze(model, jax.tree.map(jnp.ones_like, variables), x[:2])
    replay = masked.MaskedModel(model, units, "soft", mask=mask)
    autodiff_conv = functools.partial(fast_conv.Conv, weight_grad="autodiff")
    autodiff = user.build(args.model, 10, {"norm": nn.BatchNorm, "conv": autodiff_conv})
    calls = {
        "dense": (grad_of(lambda v, x: model.apply(v, x, train=True), lambda p: 0.0), (variables,)),
        "dense_autodiff_wgrad": (grad_of(lambda v, x: autodiff.apply(v, x, train=True), lambda p: 0.0), (variables,)),
        "scp_replay": (
            grad_of(
                lambda v, x: replay.apply(v, x, train=True, rngs={GUMBEL_RNG: key}),
                lambda p: reg(units.unit_view(p)),
            ),
            (variables,),
        ),
    }
    timed = benchmark.time_interleaved(calls, runs=args.runs)
    out = {name: {m: round(t[m], 2) for m in ("median_ms", "min_ms")} for name, t in timed.items()}
    out["_"] = {"model": args.model, "batch": args.batch_size, "load_average": list(os.getloadavg())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
