"""soft_prune_jax: Operation-Aware Soft Channel Pruning (Kang & Han, ICML 2020) in JAX/Flax."""

__version__ = "0.1.0"
