"""Pruning methods as plug-ins: each is one module that registers one ``base.Method``.

Owns the method interface (``base.Method``: the mask config the model is trained with, changes to its
initial variables, the regulariser, the masks the cut keeps, what the report shows), the registry by
name, and the built-in methods ``scp``, ``dense`` and ``slimming``. May import
``soft_prune_jax.scp`` (mask math) only -- never the trainer, the pipeline, models or the cut:
anything a method needs from them (e.g. the MACs of a candidate cut) is passed in as a function.
A new method is one file here that calls ``register`` (and one import line below), or a module of
the user's own that does the same before ``config.method`` names it.
"""

from soft_prune_jax.pruners import dense, scp, slimming  # noqa: F401  (importing registers them)
from soft_prune_jax.pruners.base import Method
from soft_prune_jax.pruners.registry import get_method, method_names, register

__all__ = ["Method", "get_method", "method_names", "register"]
