"""The dense baseline: no masks, no regulariser; the cut keeps every channel."""

from __future__ import annotations

from soft_prune_jax.methods.base import Method
from soft_prune_jax.methods.registry import register

METHOD = register(Method(name="dense", label="dense baseline", keep_one_rule="(never needed: nothing is cut)"))
