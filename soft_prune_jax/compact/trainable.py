"""The compact model in training mode: fine-tuning a traced cut at the compact model's cost.

``prune_traced`` replays the model's traced *evaluation* on sliced variables. Fine-tuning needs the
*training* computation -- BatchNorm on batch statistics with its running averages updated, dropout
drawn from a key -- which is another graph: the units of the evaluation graph are not recognisable
in it (the mean and variance come from the batch), so its channel groups cannot be decided again.
They need not be: the cut is already decided, as kept channels of the variables. So the training
graph (traced once per input shape, inside the step like ``traced.masked``) gets its channel
components from the same rules (``graph.groups``), every component holding a dropped channel of a
variable is dropped, and the equations are replayed on the sliced variables (``compact.interpret``):

* a component holding both a kept and a dropped variable channel, a dropped model input channel or a
  dropped logit is an error (the training computation mixes channels the evaluation cut separates);
* a value read by several equations has one slot per reader (no units are known here, so no value is
  known to be zero where dropped): a reader that keeps fewer channels than the value gathers them;
* random bits of an activation's shape (dropout) are drawn whole and sliced, so the kept channels
  see the very numbers the dense model draws.

The result equals the dense network under the same fixed cut (0/1 masks at the units, running
statistics of dropped channels frozen) on every kept parameter and statistic, step by step, and it
computes only the kept channels. Evaluation during and after fine-tuning replays the evaluation
graph with every variable-only equation recomputed from the fine-tuned variables (the pruned model
folds some of them once, from the variables it was cut from); a folded equation that reads a cut
channel cannot be recomputed from the kept ones and is refused when the model is built.
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import jax
import numpy as np

from soft_prune_jax.compact import interpret as I
from soft_prune_jax.compact.prune_model import CompactLinen, Program, _abstract, check_refold
from soft_prune_jax.graph import groups as G
from soft_prune_jax.graph import ir
from soft_prune_jax.scp.masks import GUMBEL_RNG

STATS = "batch_stats"
DROPOUT_SALT = 1 << 20  # the dropout key is fold_in(step key, DROPOUT_SALT), as traced.masked draws it


def variable_kept(program: Program) -> dict:
    """{(leaf index, axis): kept indices} of every variable axis the cut shortens."""
    analysis = program.analysis
    kept = I.kept_indices(analysis, program.alive)
    return {
        (i, ax): kept[(vid, ax)]
        for i, vid in enumerate(analysis.graph.variable_ids)
        for ax in range(len(analysis.graph.shapes[vid]))
        if (vid, ax) in kept
    }


def _dead_labels(analysis: G.Analysis, leaf_kept: Mapping) -> np.ndarray:
    """Per channel label of ``analysis``: True where it holds a dropped variable channel."""
    g = analysis.graph
    n = int(analysis.labels.max()) + 1 if len(analysis.labels) else 0
    dead, live = np.zeros(n, bool), np.zeros(n, bool)
    for i, vid in enumerate(g.variable_ids):
        for ax in range(len(g.shapes[vid])):
            labels = analysis.slot_labels(vid, ax)
            if labels is None:
                continue
            keep = np.zeros(len(labels), bool)
            keep[leaf_kept.get((i, ax), np.arange(len(labels)))] = True
            dead[labels[~keep]] = True
            live[labels[keep]] = True
    _spread_to_readers(analysis, dead)
    both = np.flatnonzero(dead & live)
    if both.size:
        path = _first_path(g, analysis, both)
        raise I.CompactError(
            f"the training computation joins a kept and a dropped channel of the cut ({path}): the compact "
            "model cannot be fine-tuned; fine-tune before cutting or keep that group whole"
        )
    return dead


def _spread_to_readers(analysis: G.Analysis, dead: np.ndarray) -> None:
    """A reader's own slot of a value cannot hold a channel the value lost: mark it dropped too, and
    with it everything linked to that slot, until nothing changes (a reader may still drop more)."""
    g = analysis.graph
    pairs = [
        (analysis.slot_labels(use, ax), analysis.slot_labels(g.eqns[e].ins[j], ax))
        for (e, j), use in analysis.split_uses.items()
        for ax in range(len(g.shapes[g.eqns[e].ins[j]]))
    ]
    pairs = [(mine, value) for mine, value in pairs if mine is not None and value is not None]
    changed = True
    while changed:
        changed = False
        for mine, value in pairs:
            newly = dead[value] & ~dead[mine]
            if newly.any():
                dead[mine[newly]] = True
                changed = True


def _first_path(g, analysis: G.Analysis, labels) -> str:
    for vid, path in zip(g.variable_ids, g.variable_paths):
        for ax in range(len(g.shapes[vid])):
            lab = analysis.slot_labels(vid, ax)
            if lab is not None and np.isin(lab, labels).any():
                return f"{'/'.join(path)} axis {ax}"
    return "an intermediate value"


def _check_whole(analysis: G.Analysis, kept: Mapping, ids, what: str) -> None:
    for vid in ids:
        for ax in range(len(analysis.graph.shapes[vid])):
            if (vid, ax) in kept:
                raise I.CompactError(f"the training computation would cut {what} (axis {ax}): expected it whole")


def _check_reads(analysis: G.Analysis, kept: Mapping) -> None:
    """Every reader's own slot keeps a subset of what the value it reads keeps."""
    g = analysis.graph
    for (e_index, j), use in analysis.split_uses.items():
        vid = g.eqns[e_index].ins[j]
        for ax in range(len(g.shapes[vid])):
            mine, value = kept.get((use, ax)), kept.get((vid, ax))
            if value is not None and (mine is None or not np.isin(mine, value).all()):
                raise I.CompactError(
                    f"{g.eqns[e_index].describe()} of the training computation reads channels the cut drops"
                )


def train_plan(graph: ir.Graph, leaf_kept: Mapping, strip: int = 1) -> tuple:
    """(analysis, kept) of a training graph under the cut's kept variable channels."""
    analysis = G.analyze(graph, strip)
    kept = I.kept_indices(analysis, ~_dead_labels(analysis, leaf_kept))
    _check_whole(analysis, kept, graph.input_ids, "a model input")
    _check_whole(analysis, kept, graph.output_ids[:1], "the logits")
    check_refold(analysis, kept)
    _check_reads(analysis, kept)
    return analysis, kept


class TrainableCompact:
    """The compact model of a traced cut, trainable: called as the trainer calls a linen module.

    ``apply(variables, x, train=True, rngs={GUMBEL_RNG: key}, mutable=['batch_stats'])`` ->
    (logits, {'batch_stats': updated}); ``apply(variables, x)`` evaluates. ``variables`` are the
    compact ones (``prune_traced``'s). ``compact`` is the cut (``prune_traced``'s compact model);
    ``trace_train(variables, x, dropout_key) -> ir.Graph`` traces the dense model's training call.
    ``inference`` is the compact model for ``compact.artifact.save`` with fine-tuned variables.
    """

    def __init__(self, compact: CompactLinen, trace_train: Callable):
        program = copy.copy(compact.program)
        program.recompute = True
        self.program, self.trace_train = program, trace_train
        self.inference = CompactLinen(program, compact.treedef, compact.defaults)
        self.leaf_kept = variable_kept(program)
        analysis, kept, _ = next(iter(program.cache.values()))
        check_refold(analysis, kept)

    def clone(self, **_):  # the model's own BN axes are kept (axis_name='batch' is the trainer's axis)
        return self

    def init(self, *_, **__):
        raise TypeError("a compact model is fine-tuned from its compact variables, not initialised")

    def apply(self, variables, x, train: bool = False, rngs=None, mutable=False):
        if not train:
            return self.inference.apply(variables, x)
        leaves = self.program.treedef.flatten_up_to(variables)
        key = dict(rngs or {}).get(GUMBEL_RNG)
        dropout = jax.random.fold_in(key, DROPOUT_SALT) if key is not None else jax.random.PRNGKey(0)
        dense = jax.tree_util.tree_unflatten(self.program.treedef, self.program.dense_leaves)
        graph = self.trace_train(dense, _abstract(x), _abstract(dropout))
        analysis, kept = train_plan(graph, self.leaf_kept, self.program.strip)
        outs = I.run(analysis, leaves, [x, dropout], kept=kept)
        logits, state = jax.tree_util.tree_unflatten(graph.out_tree, outs)
        return logits, {STATS: dict(state).get(STATS, {})}
