"""Every model on the traced path, built-in or a user's: masks inserted from outside, MACs, cost and
latency models from the graph (the compact model is saved by ``compact.artifact``).

``masked`` replays the traced model with SCP's masks on the units the group analysis finds, except
those the model's ``keep_whole`` names (the module says why a replay); ``macs`` counts conv/dense MACs
from a traced graph (dense and compact); ``cost`` reads the cost model of a MAC budget
(``scp.cost.CostModel``) off the same graph; ``latency`` gives its conv/dense layers as the ops
``compact.layer_timings`` times. May import ``ops``, ``scp``, ``models``, ``graph``, ``compact`` and
``measure``; the pipeline builds on it.
"""
