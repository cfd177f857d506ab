"""Physical pruning and what follows it: ``prune_model`` + ``interpret`` (any Flax model, linen or NNX,
cut by replaying its traced computation on sliced arrays), ``verify`` (the cut's self-check),
``trainable`` (a compact model trained at its own cost), ``latency`` (per-layer timings of this
device) and ``artifact`` (a compact model as a ``jax.export`` artifact, reloadable without its code).
May import ``ops``, ``scp``, ``models`` and ``graph``; never ``measure``, ``pruners``, ``training``
or the pipeline.
"""
