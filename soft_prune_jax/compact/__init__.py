"""Physical pruning and what follows it: ``structure`` (which arrays each mask governs, derived from
the traced computation, and how to rebuild a narrower built-in model), ``surgery`` (kept channels ->
compact model and variables, exactly), ``prune_model`` + ``interpret`` (any Flax model), ``fold``
(BatchNorm folded into convs for inference), ``export`` (save/load a built-in compact model with its
class spec), ``artifact`` (any compact model as a ``jax.export`` artifact, reloadable without its
code) and ``inputs`` (checked inference). May import ``method``, ``models``
and ``graph``; never ``measure``, ``methods``, ``training`` or the pipeline.
"""
