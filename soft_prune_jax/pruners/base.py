"""The interface every pruning method implements: one frozen dataclass of plain functions.

A method decides four things, and nothing else in the package branches on its name:

  mask_config(config)      the soft-mask hyper-parameters the model is trained with (None = no masks)
  init_variables(config, variables)
                           changes freshly initialised variables before training (default: none)
  regulariser(config)      a function of the units' params -> scalar added to the cross-entropy
  surgery_masks(config, variables, macs_ratio)
                           the 0/1 masks of the units the cut (``compact.prune_model``) keeps (None =
                           the units' own hard masks); ``macs_ratio(masks)`` is injected by the caller
                           so a method can aim at a MAC budget without importing the pipeline. (The
                           name predates the cut of the traced graph: it is the plug-in API.)

and tells the report its ``label``, its ``settings(config)`` and the words for its keep-one rule. A
group that would lose every channel, and the padding of ``round_to``, follow the cut's own ranking:
the lowest z = (eps - beta) / |gamma| first, whatever the method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.scp.masks import MaskConfig

Config = Any  # an ml_collections.ConfigDict of the shared schema (configs/default.py)
Params = Any  # a Flax params tree
Masks = dict[str, np.ndarray]  # {masked unit name: 0/1 keep mask}
MacsRatio = Callable[[Mapping[str, np.ndarray]], float]  # masks -> compact MACs / dense MACs


def no_masks(config: Config) -> Optional[MaskConfig]:
    return None


def unchanged(config: Config, variables: Mapping[str, Any]) -> Mapping[str, Any]:
    return variables


def zero_penalty(params: Params) -> jax.Array:
    return jnp.zeros((), jnp.float32)


def no_regulariser(config: Config) -> Callable[[Params], jax.Array]:
    return zero_penalty


def model_hard_masks(config: Config, variables: Mapping[str, Any], macs_ratio: MacsRatio) -> Optional[Masks]:
    return None


def no_settings(config: Config) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class Method:
    """One pruning method (see the module docstring for what each function decides)."""

    name: str  # config.method
    label: str  # how reports name it
    mask_config: Callable[[Config], Optional[MaskConfig]] = no_masks
    init_variables: Callable[[Config, Mapping[str, Any]], Mapping[str, Any]] = unchanged
    regulariser: Callable[[Config], Callable[[Params], jax.Array]] = no_regulariser
    surgery_masks: Callable[[Config, Mapping[str, Any], MacsRatio], Optional[Masks]] = model_hard_masks
    keep_one_rule: str = "the lowest z = (eps - beta) / |gamma|"  # completes "kept the channel with ..."
    settings: Callable[[Config], dict] = no_settings  # the config fields the report shows
