"""The SCP method itself, as arithmetic on arrays: ``masks`` (the mask math as pure functions --
deactivation and pruning probabilities, Gumbel soft masks, hard masks, the sparsity penalty -- plus
pytree helpers that find the masked BN layers by name), ``budget`` (the MAC cost model of a network's
channel groups: expected, hard-masked and early MACs, the cost-aware penalty, landing a cut on a
budget), ``controller`` (the PI controller on log lambda) and ``latency`` (the latency model: per-layer
tables read bilinearly, widths chosen by latency). No module here holds model state: the masks are
inserted from outside (``traced.masked``). Imports jax, flax and numpy only; every other subpackage may
import it.
"""
