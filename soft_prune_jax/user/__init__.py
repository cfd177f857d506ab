"""A user's own Flax model through the whole pipeline: masks inserted from outside, MACs from the graph
(its compact model is saved by ``compact.artifact``).

``masked`` replays the traced model with SCP's masks on the units the group analysis finds (the
module says why a replay); ``macs`` counts conv/dense MACs from a traced graph (dense and compact);
``cost`` reads the cost model of a MAC budget (``method.budget.CostModel``) off the same graph.
May import ``ops``, ``method``, ``models``, ``graph``, ``compact`` and ``measure``; the pipeline
builds on it.
"""
