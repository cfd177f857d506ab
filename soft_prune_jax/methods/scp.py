"""SCP (Kang & Han, ICML 2020): soft operation-aware masks, trained jointly with the sparsity penalty.

Surgery cuts by the model's own hard masks [pi < 0.5]; the keep-one fallback and round_to padding
use the model's own ranking (lowest pi), so both defaults of ``Method`` apply.
"""

from __future__ import annotations

from typing import Callable

import jax

from soft_prune_jax.method import masks as M
from soft_prune_jax.methods.base import Config, Method, Params
from soft_prune_jax.methods.registry import register


def mask_config(config: Config) -> M.MaskConfig:
    return M.MaskConfig(**{k: float(v) for k, v in config.mask.items()})


def regulariser(config: Config) -> Callable[[Params], jax.Array]:
    """lambda * sum over masked layers of sum_c (beta_c + s |gamma_c|)."""
    lam, s = float(config.sparsity_lambda), float(config.sparsity_s)
    return lambda params: lam * M.sparsity_penalty(params, s)


def settings(config: Config) -> dict:
    return {"sparsity_lambda": float(config.sparsity_lambda), "sparsity_s": float(config.sparsity_s),
            "mask": {k: float(v) for k, v in config.mask.items()}}


METHOD = register(Method(name="scp", label="SCP", mask_config=mask_config, regulariser=regulariser,
                         settings=settings))
