"""Physical pruning and what follows it: ``structure`` (which arrays each mask governs, per
architecture, and how to rebuild a narrower model), ``surgery`` (kept channels -> compact model and
variables, exactly), ``fold`` (BatchNorm folded into convs for inference), ``export`` (save/load a
compact model with its spec) and ``inputs`` (checked inference). May import ``method``, ``models``
and ``graph``; never ``measure``, ``methods``, ``training`` or the pipeline.
"""
