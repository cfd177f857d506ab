"""The training loop: ``fit`` runs one ``Phase`` over epochs, resuming from its checkpoints.

Determinism (what makes resuming exact): the Gumbel key of a step is ``fold_in(state.rng, step)``,
identical on every replica, and the training data of epoch e comes from a fresh iterator seeded by
``epoch_seed(config.seed, e)``, so the batches of any step are a function of (seed, step) alone.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from soft_prune_jax.pruners.base import zero_penalty
from soft_prune_jax.scp.masks import MaskConfig
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.training import data as default_dataset
from soft_prune_jax.training import state as S
from soft_prune_jax.training.budget_control import Budget
from soft_prune_jax.training.eval_loop import evaluate
from soft_prune_jax.training.parallel import Parallel, check_global_batch
from soft_prune_jax.training.progress import Progress
from soft_prune_jax.training.steps import AXIS, eval_step, train_step
from soft_prune_jax.training.summaries import Summaries


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training run of the pipeline: joint training from scratch, or fine-tuning.

    name: checkpoint subdirectory and summary tag ('train', 'finetune').
    model: built without ``axis_name`` (the loop clones it with ``axis_name=AXIS``).
    mask: the model's mask config, for the channel counts of the progress line (None: none).
    view: params -> the masked BN layers those counts read (``UnitSet.unit_view``; None: the params).
    variables: initial variables, or None to initialise from ``config.seed``.
    init_transform: applied to freshly initialised variables (e.g. a method's own BN scale init).
    budget: a MAC budget or the cost-aware penalty (training/budget_control.py): replaces ``regulariser``.
    """

    name: str
    model: nn.Module
    learning_rate: float
    num_epochs: int
    regulariser: Callable[[Any], jax.Array] = zero_penalty
    mask: Optional[MaskConfig] = None
    view: Optional[Callable[[Any], Any]] = None
    variables: Optional[Mapping[str, Any]] = None
    init_transform: Optional[Callable[[Mapping[str, Any]], Mapping[str, Any]]] = None
    lr_boundaries: Optional[Sequence[float]] = None  # epochs; None = config.lr_boundaries
    seed_offset: int = 0
    budget: Optional[Budget] = None


@dataclasses.dataclass
class FitResult:
    state: S.TrainState  # host copy
    steps: int
    train_metrics: dict  # mean over the last logging window
    validation: Optional[dict]


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch: a deterministic function of (seed, epoch) only."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def fit(
    config,
    workdir: str,
    phase: Phase,
    *,
    dataset=None,
    devices: Optional[Sequence[jax.Device]] = None,
    macs_fn: Optional[Callable[[Any], dict]] = None,
) -> FitResult:
    """Trains ``phase.model`` for ``phase.num_epochs``, resuming from WORKDIR/checkpoints/<phase>.

    dataset: a module-like object with ``get_dataset_info``, ``train_iterator`` and ``eval_iterator``
      (default: ``soft_prune_jax.training.data``); tests pass a synthetic one.
    macs_fn: variables -> {'macs', 'ratio'} for the progress line (MACs under the hard masks).
    Raises FloatingPointError on a non-finite loss; checkpoints written before it are kept.
    """
    dataset = dataset if dataset is not None else default_dataset
    parallel = Parallel(config.parallel, devices)
    check_global_batch(config.batch_size, parallel.num_local_devices * jax.process_count())
    info = dataset.get_dataset_info(config)
    spe = S.steps_per_epoch(int(info.num_train), config.batch_size)  # validation already excluded
    total_steps = phase.num_epochs * spe
    boundaries = config.lr_boundaries if phase.lr_boundaries is None else phase.lr_boundaries
    lr_fn = S.create_learning_rate_fn(phase.learning_rate, boundaries, config.lr_decay, spe)

    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), phase.seed_offset)
    init_key, gumbel_key = jax.random.split(key)
    variables = phase.variables
    if variables is None:
        variables = S.init_variables(phase.model, init_key, info.input_shape)
        if phase.init_transform is not None:
            variables = phase.init_transform(variables)
    tx = S.create_optimizer(config, lr_fn, variables["params"])
    checkpointer = ckpt_lib.TrainCheckpointer(
        ckpt_lib.checkpoint_dir(workdir, phase.name), max_to_keep=config.keep_checkpoints
    )
    budget = phase.budget.bind(total_steps) if phase.budget is not None else None
    controller = budget.init_state() if budget is not None else None
    host_state = checkpointer.restore_or(S.create_train_state(gumbel_key, variables, tx, controller))
    start_step = int(host_state.step)
    if start_step:
        logging.info(
            "%s: resuming from step %d of %d (%s)", phase.name, start_step, total_steps, checkpointer.directory
        )

    model = phase.model.clone(axis_name=AXIS)
    p_train = parallel.map(
        functools.partial(
            train_step, model=model, tx=tx, learning_rate_fn=lr_fn, regulariser=phase.regulariser, budget=budget
        ),
        donate_first=True,
    )
    p_eval = parallel.map(functools.partial(eval_step, model=model))
    state = parallel.replicate(host_state)
    progress = Progress(
        phase.name,
        phase.mask,
        parallel,
        total_steps,
        start_step,
        checkpointer,
        macs_fn,
        Summaries(os.path.join(workdir, "tensorboard", phase.name)),
        view=phase.view,
    )
    log_every = max(1, int(config.log_every_steps))
    validation = None

    try:
        for epoch in range(start_step // spe, phase.num_epochs):
            first = max(start_step, epoch * spe)
            batches = dataset.train_iterator(
                config, local_devices=parallel.num_local_devices, seed=epoch_seed(config.seed, epoch)
            )
            batches = itertools.islice(batches, first - epoch * spe, None)  # mid-epoch resume
            for step in range(first, (epoch + 1) * spe):
                state, metrics = p_train(state, parallel.shard_batch(next(batches)))
                progress.pending.append((step + 1, metrics))
                if (step + 1) % log_every == 0:
                    progress.flush(step + 1, state, log=True)
            progress.flush((epoch + 1) * spe, state, log=False)  # every loss of the epoch is finite before saving
            if int(config.get("validation_examples") or 0) > 0:
                validation = evaluate(
                    parallel,
                    p_eval,
                    {"params": state.params, "batch_stats": state.batch_stats},
                    dataset.eval_iterator(config, local_devices=parallel.num_local_devices, split="validation"),
                )
                logging.info(
                    "%s epoch %d: validation accuracy %.4f, loss %.4f",
                    phase.name,
                    epoch + 1,
                    validation["accuracy"],
                    validation["loss"],
                )
                progress.summaries.scalars((epoch + 1) * spe, {f"validation/{k}": v for k, v in validation.items()})
            if (epoch + 1) % int(config.checkpoint_every_epochs) == 0 or epoch + 1 == phase.num_epochs:
                checkpointer.save((epoch + 1) * spe, parallel.unreplicate(state))
                progress.last_saved = (epoch + 1) * spe
        progress.flush(total_steps, state, log=True)
        checkpointer.wait_until_finished()
    finally:
        progress.summaries.close()
        checkpointer.close()
    return FitResult(
        state=parallel.unreplicate(state), steps=total_steps, train_metrics=progress.last_mean, validation=validation
    )
