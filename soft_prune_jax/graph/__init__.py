"""Channel groups found from the computation of any Flax model (linen or NNX).

``ir`` traces ``apply`` to a jaxpr and flattens it (nested calls inlined, every variable leaf tied
to its path); ``rules`` is the one table of per-primitive channel rules; ``units`` recognises
BN -> ReLU units from their algebra and which values are exactly zero on dropped channels;
``groups`` joins channels with a union-find (connected components) and decides which groups can
lose channels, recording the equation that stopped the others. May import ``scp`` only;
``compact.prune_model`` builds on it.
"""

from soft_prune_jax.graph.groups import Analysis, Group, Member, analyze
from soft_prune_jax.graph.ir import Graph, GraphError, trace
from soft_prune_jax.graph.units import Unit

__all__ = ["Analysis", "Graph", "GraphError", "Group", "Member", "Unit", "analyze", "trace"]
