"""What a config asks the trainer for, through its method plug-in: the model and the joint-training phase."""

from __future__ import annotations

import flax.linen as nn

from soft_prune_jax.methods import get_method
from soft_prune_jax.models import get_model
from soft_prune_jax.training import data
from soft_prune_jax.training.loop import Phase


def create_model(config, **overrides) -> nn.Module:
    """The registry model of ``config``, with the masks its method trains with (None: no masks).

    An optional ``config.model_kwargs`` overrides constructor defaults (e.g. tiny widths for tests).
    """
    kwargs = dict(config.get("model_kwargs") or {})
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # JSON lists -> tuples
    mask = get_method(config.method).mask_config(config)
    return get_model(config.model, data.num_classes(config), **{"mask": mask, **kwargs, **overrides})


def training_phase(config) -> Phase:
    """Joint training from scratch: the model, regulariser and initial variables of ``config.method``."""
    method = get_method(config.method)
    return Phase(
        "train",
        create_model(config),
        float(config.learning_rate),
        int(config.num_epochs),
        regulariser=method.regulariser(config),
        mask=method.mask_config(config),
        init_transform=lambda variables: method.init_variables(config, variables),
    )
