"""The SCP method itself: ``masks`` (the mask math as pure functions -- deactivation and pruning
probabilities, Gumbel soft masks, hard masks, the sparsity penalty -- plus pytree helpers that find
the masked BN layers by name) and ``units`` (``MaskedBNReLU``, the only module holding mask state,
and a plain synchronisable ``BatchNorm``). Imports jax, flax and numpy only (``units`` imports
``masks``); every other subpackage may import it.
"""
