"""A user's own Flax model through the whole pipeline: masks inserted from outside, MACs from the graph,
a StableHLO export of the compact model.

``masked`` replays the traced model with SCP's masks on the units the group analysis finds (the
module says why a replay); ``macs`` counts conv/dense MACs from a traced graph (dense and compact);
``artifact`` saves a compact model as a ``jax.export`` artifact next to its arrays and loads it
where the user's class is not importable. May import ``ops``, ``method``, ``models``, ``graph``,
``compact`` and ``measure``; the pipeline builds on it.
"""
