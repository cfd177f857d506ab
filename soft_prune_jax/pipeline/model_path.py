"""The pipeline's phases on the traced path: every model, a built-in architecture by name
(``config.model = "resnet56"``) or a user's own (``"package.module:attribute"``), is trained, cut,
fine-tuned, evaluated and measured from its traced computation. Each phase module calls one
function here:

  train      ``training_phase``: the user model behind ``traced.masked.MaskedModel`` (SCP: soft masks on
             every unit of a prunable group; dense/slimming: the model as written) and the method's
             regulariser over the units (``UnitSet.unit_view``); under a MAC budget or the cost-aware
             penalty, a ``Budget`` with the cost model of the graph (``traced.graph_cost``) over the same view;
             ``progress_macs``: the kept-MACs ratio of the hard masks for the progress line
  prune      ``prune``: ``prune_traced`` with the method's masks (SCP: the units' hard masks; slimming:
             its global threshold over the units' |gamma|; dense: nothing cut); the compact model is
             saved as a ``jax.export`` artifact (``compact.artifact``) and the kept channels in prune.json;
             under a MAC budget, SCP lands the cut on it (highest z first, the compact model's own
             MACs) and prune.json gets its "budget" record
  finetune   ``finetune_phase``: prune's compact model itself, trained at its own cost
             (``compact.trainable``): the user's training call (BN on batch statistics, running
             averages, dropout) traced and replayed on the kept channels, which equals the dense
             network under the same fixed cut step for step on every kept parameter; the fine-tuned
             compact variables are saved as the artifact (``save_finetuned``). A finetune checkpoint
             of the dense network under the cut (the layout before) is refused in one line
  evaluate   ``evaluation_pair``: the hard-masked reference (the same fixed masks) and the reloaded
             artifact
  benchmark / report   ``counts``: MACs per layer from the graph (``traced.macs``), dense vs compact
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.compact import artifact
from soft_prune_jax.compact import interpret as I
from soft_prune_jax.compact import layer_timings as CL
from soft_prune_jax.compact.prune_model import decide, prune_traced
from soft_prune_jax.compact.trainable import TrainableCompact
from soft_prune_jax.graph import ir
from soft_prune_jax.models import user as U
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.pipeline import budget_setup as budget
from soft_prune_jax.pipeline import fresh_timing
from soft_prune_jax.pipeline import latency_setup as latency
from soft_prune_jax.pipeline.records import read_json
from soft_prune_jax.pipeline.workdir import trained_variables
from soft_prune_jax.pruners import get_method
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import masks as M
from soft_prune_jax.scp.masks import MaskConfig
from soft_prune_jax.traced import graph_cost as cost
from soft_prune_jax.traced import latency_landing as landing
from soft_prune_jax.traced import macs, masked
from soft_prune_jax.traced.graph_ops import graph_ops
from soft_prune_jax.training import checkpoint as ckpt_lib
from soft_prune_jax.training import data
from soft_prune_jax.training.loop import Phase

SAMPLE_BATCH = 2  # the batch the evaluation graph is traced with (BN in evaluation mode: any size)


@functools.lru_cache(maxsize=4)
def _setup(spec: str, num_classes: int, kwargs_items: tuple, call: str, seed: int, input_shape: tuple):
    user = U.build(spec, num_classes, dict(kwargs_items), call=call, seed=seed)
    x = jnp.zeros((SAMPLE_BATCH,) + input_shape, jnp.float32)
    # The analysis needs shapes only (no initialiser is compiled); ones keep var + eps > 0 for gamma_beta.
    shapes = jax.eval_shape(user.init, jax.random.PRNGKey(seed), x)
    variables = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    return user, masked.UnitSet.analyze(user, variables, x)


def setup(config, input_shape: Sequence[int], num_classes: Optional[int] = None):
    """(UserModel, UnitSet) of ``config.model``; analysed once per process. ``num_classes``: None = the
    dataset's (``data.num_classes``)."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config.get("model_kwargs") or {}).items()}
    return _setup(
        config.model,
        data.num_classes(config) if num_classes is None else int(num_classes),
        tuple(sorted(kwargs.items())),
        str(config.get("model_call") or "train"),
        int(config.seed),
        tuple(input_shape),
    )


def mask_config(config) -> MaskConfig:
    return get_method(config.method).mask_config(config) or MaskConfig(**{k: float(v) for k, v in config.mask.items()})


def training_phase(config, input_shape: Sequence[int]) -> Phase:
    method = get_method(config.method)
    user, units = setup(config, input_shape)
    masked.log_units(units, config.model)
    mask = method.mask_config(config)
    model = masked.MaskedModel(user, units, "soft" if mask is not None else "none", mask=mask)
    reg = method.regulariser(config)
    # a MAC budget or the cost-aware penalty: lambda * penalty over the same units, MACs from the graph
    unit_budget = (
        budget.budget_for(
            config, cost.cost_model(units), units.unit_view, _latency_model(config, user, units, input_shape)
        )
        if budget.uses_budget(config)
        else None
    )
    return Phase(
        "train",
        model,
        float(config.learning_rate),
        int(config.num_epochs),
        regulariser=lambda params: reg(units.unit_view(params)),
        mask=mask if units.units else None,
        view=jax.jit(units.unit_view),
        init_transform=lambda variables: method.init_variables(config, variables),
        budget=unit_budget,
    )


def progress_macs(config, input_shape: Sequence[int], phase: Phase) -> Optional[Callable[[Any], dict]]:
    """variables -> {'macs', 'ratio'}: the MACs per example of the network the cut of the current
    hard masks leaves (``macs.macs_ratio_fn``: the cut's own decisions, keep-one included; round_to 1),
    for the train phase's progress line. None when ``phase`` trains without masks."""
    if phase.mask is None:
        return None
    _, units = setup(config, input_shape)
    dense = macs.count(units.analysis).macs
    ratio_of: list = []

    def macs_fn(variables) -> dict:
        if not ratio_of:  # the constants order the keep-one channel only: MACs depend on the counts
            leaves = jax.tree_util.tree_leaves({**units.reference, "params": variables["params"]})
            consts = I.constant_values(units.analysis, leaves)
            ratio_of.append(macs.macs_ratio_fn(units.analysis, consts, phase.mask, 1))
        hard = M.hard_masks(phase.view(variables["params"]), phase.mask)
        ratio = ratio_of[0](units.group_keep(hard))
        return {"macs": ratio * dense, "ratio": ratio}

    return macs_fn


def _latency_model(config, user: U.UserModel, units: masked.UnitSet, input_shape: Sequence[int]):
    """The latency model of the user's model on this device under a latency budget (else None): the
    graph's cost model and ops, timed as a built-in model's are (``compact.layer_timings``)."""
    if budget.latency_target(config) is None:
        return None
    x = jnp.zeros((SAMPLE_BATCH,) + tuple(input_shape), jnp.float32)
    variables = user.init(jax.random.PRNGKey(int(config.seed)), x)
    batch = latency.batch_size(config)
    ms = latency.dense_ms(lambda v, x: user.apply(v, x, train=False), variables, input_shape, batch)
    return CL.latency_model(cost.cost_model(units), graph_ops(units.analysis), ms, batch=batch)


def _latency_padder(config, units: masked.UnitSet, analysis, consts, variables):
    """keep (None: the hard masks) -> keep padded to the widths ``round_to='latency'`` chooses: the
    chooser of the built-in models (``pipeline.latency_setup``) over the graph's cost model and ops.
    Built once per cut: a MAC budget's search pads every candidate, and the chooser reads the timing
    cache."""
    mask = mask_config(config)
    cost_model = cost.cost_model(units)
    chooser = latency.graph_chooser(cost_model, graph_ops(units.analysis), latency.batch_size(config))
    view = M.masked_layers(jax.tree_util.tree_map(np.asarray, units.unit_view(variables["params"])))
    z = B.group_z(cost_model.units, {n: M.deactivation_z(v["scale"], v["bias"], mask.eps) for n, v in view.items()})

    def pad(keep):
        plans = {n: p for n, p in decide(analysis, consts, keep=keep, mask_config=mask).items() if p.prunable}
        chosen = chooser({n: len(p.kept) for n, p in plans.items()})
        kept = {n: np.isin(np.arange(p.total), p.kept) for n, p in plans.items()}
        return latency.pad_keep(kept, chosen, z)

    return pad


def _trace_fn(user: U.UserModel):
    def trace_fn(variables, inputs, kwargs):  # the compact model is inference only: kwargs (train=False) fixed
        with fast_conv.flax_conv_formulation("xla"):  # as prune_model traces: one equation per conv
            return ir.trace(lambda v, *xs: user.apply(v, *xs, train=False), variables, *inputs)

    return trace_fn


def cut(
    config,
    variables,
    input_shape: Sequence[int],
    keep=None,
    record: Optional[dict] = None,
    workdir: Optional[str] = None,
):
    """(compact, compact_variables) of the trained ``variables`` by the method's masks (or ``keep``).
    Under a latency budget ``record`` (if given) receives prune.json's "budget" record; ``workdir``
    (the run's, whose train checkpoint holds ``variables``) lets landing time in a fresh process."""
    user, units = setup(config, input_shape)
    x = jnp.zeros((SAMPLE_BATCH,) + tuple(input_shape), jnp.float32)
    mask = mask_config(config)
    final = keep is not None  # prune's own cut again (fine-tuned weights, counts): no new rounding
    by_latency = not final and config.round_to == latency.LATENCY
    round_to = 1 if final or by_latency else int(config.round_to)
    if keep is None:
        method = get_method(config.method)
        trained = masked.UnitSet.analyze(user, variables, x)
        consts = I.constant_values(trained.analysis, jax.tree_util.tree_leaves(dict(variables)))
        view = {"params": jax.tree_util.tree_map(np.asarray, units.unit_view(variables["params"]))}
        pad = _latency_padder(config, units, trained.analysis, consts, variables) if by_latency else None

        def final_keep(masks):  # the method's masks as group keep masks, padded where round_to='latency'
            if masks is not None:
                keep = units.group_keep(masks)
            elif method.mask_config(config) is None:  # trained without masks and no masks chosen: nothing is cut
                keep = {grp.name: np.ones(grp.size, bool) for grp in units.analysis.groups if grp.prunable}
            else:  # every group by its units' hard masks, but those the model keeps whole (keep_whole)
                keep = units.group_keep({}) or None
            return pad(keep) if pad else keep

        if latency.latency_target(config) is not None and units.units:
            traced = functools.partial(prune_traced, _trace_fn(user), dict(variables), [x], round_to=round_to)
            masks, landed = _latency_landing(
                config,
                user,
                units,
                (trained.analysis, consts, mask),
                variables,
                view,
                final_keep,
                traced,
                input_shape,
                workdir,
            )
            if record is not None:
                record.update(landed)
        else:
            ratio = macs.macs_ratio_fn(trained.analysis, consts, mask, round_to)
            # a MAC budget counts the widths after padding (round_to='latency' pads in final_keep)
            masks = method.surgery_masks(config, view, lambda m: ratio(final_keep(m))) if units.units else None
        keep = final_keep(masks)
    return prune_traced(
        _trace_fn(user),
        dict(variables),
        [x],
        keep=keep,
        round_to=round_to,
        mask_config=mask,
        call_kwargs={"train": False},
    )


def _latency_landing(config, user, units, analysed, variables, view, final_keep, traced, input_shape, workdir):
    """(masks, record) of ``latency.land`` for a user's model: the graph cut's widths, its compact model
    timed against the user's model as written."""
    analysis, consts, mask = analysed
    cost_model = cost.cost_model(units)
    batch = latency.batch_size(config)

    def dense_apply(v, x):
        return user.apply(v, x, train=False)

    lm = CL.latency_model(
        cost_model, graph_ops(units.analysis), latency.dense_ms(dense_apply, variables, input_shape, batch), batch=batch
    )

    def widths_of(masks):
        plans = decide(analysis, consts, keep=final_keep(masks), round_to=traced.keywords["round_to"], mask_config=mask)
        return {n: len(p.kept) for n, p in plans.items() if p.prunable}

    def measure(masks):
        compact, compact_vars = traced(keep=final_keep(masks), mask_config=mask, call_kwargs={"train": False})
        if workdir is None or not fresh_timing.needed():
            return latency.measure_pair(dense_apply, variables, compact.apply, compact_vars, input_shape, batch)
        with tempfile.TemporaryDirectory() as tmp:  # the compact model as saved, timed as the benchmark phase times it
            artifact.save(tmp + "/compact", compact, compact_vars, _sample(input_shape))
            classes = data.num_classes(config)
            timed = fresh_timing.time_pair(
                workdir, tmp + "/compact", input_shape, classes, [batch], landing.LANDING_RUNS
            )
        return timed[batch]["dense"]["median_ms"], timed[batch]["compact"]["median_ms"]

    method = get_method(config.method)
    layer_ms = CL.layer_ms(cost_model, graph_ops(units.analysis), CL.Timings(), batch, "float32")
    masks_for = functools.partial(method.surgery_masks, config, view)
    return latency.land(config, cost_model, lm, masks_for, widths_of, measure, layer_ms)


def _sample(input_shape: Sequence[int]) -> jax.ShapeDtypeStruct:
    """The artifact's input: float32 images of ``input_shape``, any batch size."""
    return jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)


def kept_of(workdir: str, needed_by: str) -> dict:
    return {
        k: np.asarray(v, np.int64)
        for k, v in read_json(workdir, "prune.json", needed_by=needed_by)["kept_indices"].items()
    }


def prune(config, variables, input_shape: Sequence[int], directory: str) -> dict:
    """Cuts, saves the artifact in ``directory`` and returns prune.json's record."""
    user, units = setup(config, input_shape)
    latency_record: dict = {}
    compact, compact_vars = cut(
        config, variables, input_shape, record=latency_record, workdir=os.path.dirname(directory)
    )
    plans = {name: p for name, p in compact.program.plans.items() if p.prunable}
    artifact.save(
        directory,
        compact,
        compact_vars,
        _sample(input_shape),
        overwrite=True,
        extra={"source": "prune", "model": config.model, "method": config.method},
    )
    summary = {
        "kept_channels": {name: len(p.kept) for name, p in plans.items()},
        "total_channels": {name: p.total for name, p in plans.items()},
        "kept_by_fallback": sorted(name for name, p in plans.items() if p.from_mask == 0 and p.total),
        "kept_indices": {name: p.kept.tolist() for name, p in plans.items()},
        "units": masked.describe(units, config.model),
        "groups_kept_whole": {name: p.reason for name, p in compact.program.plans.items() if not p.prunable},
    }
    if config.get("target_macs_ratio") is not None:  # a MAC budget: target vs reached
        summary["budget"] = _landing_record(config, variables, input_shape, compact)
    if latency_record:  # a latency budget: target, estimate and measurement
        summary["budget"] = latency_record
    return summary


def _landing_record(config, variables, input_shape: Sequence[int], compact) -> dict:
    """prune.json's "budget" record: the cut of the trained hard masks (no landing) against ``compact``."""
    user, _ = setup(config, input_shape)
    x = jnp.zeros((SAMPLE_BATCH,) + tuple(input_shape), jnp.float32)
    analysis = masked.UnitSet.analyze(user, variables, x).analysis
    consts = I.constant_values(analysis, jax.tree_util.tree_leaves(dict(variables)))
    # the hard masks' own widths (round_to='latency' pads only the landed cut)
    mask, round_to = mask_config(config), 1 if config.round_to == latency.LATENCY else int(config.round_to)
    hard = decide(analysis, consts, round_to=round_to, mask_config=mask)
    dense = macs.count(analysis).macs
    return budget.budget_record(
        config,
        macs.macs_ratio_fn(analysis, consts, mask, round_to)({}),
        macs.of_compact(compact).macs / dense,
        sum(len(p.kept) for p in hard.values() if p.prunable)
        - sum(len(p.kept) for p in compact.program.plans.values() if p.prunable),
    )


def fixed_model(config, workdir: str, input_shape: Sequence[int], needed_by: str) -> masked.MaskedModel:
    """The trained network under the cut prune chose: 0/1 masks at the units (the evaluation's reference)."""
    user, units = setup(config, input_shape)
    return masked.MaskedModel(user, units, "fixed", fixed=units.unit_masks_of(kept_of(workdir, needed_by)))


def _train_trace(user: U.UserModel):
    def trace_train(variables, x, dropout_key):  # the training call traced.masked replays, unmasked
        return ir.trace(lambda v, x, k: user.apply(v, x, train=True, rngs={"dropout": k}), variables, x, dropout_key)

    return trace_train


def compact_for_finetune(config, workdir: str, input_shape: Sequence[int], dense=None):
    """(TrainableCompact, compact variables): prune's cut of the trained network ``dense`` (default: the
    workdir's), trainable."""
    user, _ = setup(config, input_shape)
    dense = trained_variables(config, workdir) if dense is None else dense
    compact, compact_vars = cut(config, dense, input_shape, keep=kept_of(workdir, "finetune"))
    variables = {"params": compact_vars["params"], "batch_stats": compact_vars.get("batch_stats", {})}
    return TrainableCompact(compact, _train_trace(user)), variables


def refuse_dense_checkpoint(config, workdir: str, dense, compact_vars) -> None:
    """A finetune checkpoint of the dense network under the cut (how user models were fine-tuned
    before the compact model was) cannot resume the compact fine-tune: one line naming it."""
    directory = ckpt_lib.checkpoint_dir(workdir, "finetune")
    if not os.path.isdir(directory):
        return
    checkpointer = ckpt_lib.TrainCheckpointer(directory, max_to_keep=config.keep_checkpoints)
    try:
        step = checkpointer.latest_step()
        stored = checkpointer.restore_raw(step)["params"] if step is not None else None
    finally:
        checkpointer.close()

    def shapes(tree):
        return [np.shape(a) for a in jax.tree_util.tree_leaves(tree)]

    # where nothing was cut the two layouts are one, and the checkpoint resumes
    if stored is not None and shapes(stored) == shapes(dense["params"]) != shapes(compact_vars["params"]):
        raise ValueError(
            f"{directory} holds a fine-tune of the dense network under the cut (the layout before user models "
            "were fine-tuned compact): move it away to fine-tune the compact model, or use a new workdir"
        )


def finetune_phase(config, workdir: str, input_shape: Sequence[int], variables, epochs: int) -> Phase:
    """Fine-tuning of prune's compact model itself (``compact.trainable``), at its own cost. ``variables``
    (the trained dense network) are what prune cut; the phase starts from their kept channels."""
    model, compact_vars = compact_for_finetune(config, workdir, input_shape, variables)
    refuse_dense_checkpoint(config, workdir, variables, compact_vars)
    scale = epochs / float(config.num_epochs)
    return Phase(
        "finetune",
        model,
        float(config.finetune_learning_rate),
        epochs,
        lr_boundaries=tuple(b * scale for b in config.lr_boundaries),
        variables=compact_vars,
        seed_offset=1,
    )


def save_finetuned(config, workdir: str, input_shape: Sequence[int], variables, directory: str, epochs: int):
    """Saves the fine-tuned compact ``variables`` as the artifact (variable-only equations recomputed)."""
    model, _ = compact_for_finetune(config, workdir, input_shape)
    artifact.save(
        directory,
        model.inference,
        variables,
        _sample(input_shape),
        overwrite=True,
        extra={"source": "finetune", "epochs": epochs, "model": config.model},
    )


def evaluation_pair(config, workdir: str, input_shape: Sequence[int], compact_dir: str):
    """(reference(v, x), compact, compact_variables): the hard-masked trained network and the artifact."""
    reference = fixed_model(config, workdir, input_shape, "evaluate")
    compact, compact_vars = artifact.load(compact_dir)
    return (lambda v, x: reference.apply(v, x, train=False)), compact, compact_vars


def dense_model(config, input_shape: Sequence[int], num_classes: Optional[int] = None) -> masked.MaskedModel:
    """The user's model as written (no masks): what pruning is measured against."""
    user, units = setup(config, input_shape, num_classes)
    return masked.MaskedModel(user, units, "none")


def counts(config, workdir: str, variables, input_shape: Sequence[int]):
    """(dense FlopCount, compact FlopCount) from the graph, the compact one with prune's kept channels."""
    compact, _ = cut(config, variables, input_shape, keep=kept_of(workdir, "report"))
    return macs.count(compact.program.analysis), macs.of_compact(compact)


def load(directory: str):
    return artifact.load(directory)


__all__ = [
    "counts",
    "cut",
    "dense_model",
    "evaluation_pair",
    "finetune_phase",
    "load",
    "progress_macs",
    "prune",
    "save_finetuned",
    "setup",
    "training_phase",
]
