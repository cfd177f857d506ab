"""The dense baseline: no masks, no regulariser; the cut keeps every channel."""

from __future__ import annotations

from soft_prune_jax.pruners.base import Method
from soft_prune_jax.pruners.registry import register

METHOD = register(Method(name="dense", label="dense baseline", keep_one_rule="(never needed: nothing is cut)"))
