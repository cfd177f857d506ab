"""A cut that checks itself: ``prune_model`` verifies every group's plan on the model it was given,
without trusting the per-primitive rules that built the group's index maps.

Two checks, run before the compact model is returned (``check=False`` turns them off):

1. Its own masks. A unit channel that the unit's own SCP hard mask keeps is never dropped, however
   many unit channels reach one group channel (a depthwise multiplier, a channel shuffle, split
   halves added). Read per unit from its (gamma, beta); groups given in ``keep=`` are the caller's.
2. Replay against the dense function. On a random probe input (fixed seed; the given sample where
   an input is not floating point), the compact replay -- every equation re-bound on the sliced
   arrays -- must equal the dense function with the dropped channels zeroed at the unit outputs,
   which evaluates every equation exactly as traced. A wrong index map anywhere between the units
   and the layers that sum their channels away, or a primitive whose parameters the replay cannot
   follow, makes the two differ (or the replay fail). All groups are checked together, both sides in
   one program compiled with XLA's optimisations off (``CHEAP_COMPILE``): a process's first eager
   replay would compile every distinct (primitive, shape) on its own, and an optimised compile of
   the whole program spends its time on speed the single probe does not need (a small graph, below
   ``COMPILE_FROM_EQUATIONS``, is replayed op by op: its few ops compile quickly). Only when that fails
   is each group checked on its own, eagerly, so the many replays share one cache of compiled ops.

A group that fails is left whole, its plan's ``reason`` saying why (prune.json's "groups_kept_whole").
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np

from soft_prune_jax.compact import interpret as I
from soft_prune_jax.graph import units as U
from soft_prune_jax.graph.groups import Analysis
from soft_prune_jax.scp import masks as M

TOLERANCE = 1e-4  # largest |compact - dense with zeros| over max(1, |dense|): float32 rounding is ~1e-6
# What jax_disable_most_optimizations sets, scoped to the check's one compile: cheaper to compile
# than both the eager op-by-op replay and XLA's default pipeline (docs/RESULTS.md).
CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# Below this many equations the replay runs op by op: a small model's few distinct ops compile faster
# than a whole program, and later checks in the process reuse them (the test zoo prunes hundreds).
COMPILE_FROM_EQUATIONS = 400


def check_plans(analysis: Analysis, leaves, consts: Mapping, plans: dict, inputs, mask_config, keep=()) -> dict:
    """``plans`` with every group that fails a check left whole (see the module docstring)."""
    failed = _own_mask_failures(analysis, consts, plans, mask_config, set(keep))
    plans = _whole(analysis, plans, failed)
    cut = [name for name, p in plans.items() if p.prunable and len(p.kept) < p.total]
    if not cut:
        return plans
    probe = probe_inputs(analysis, inputs)
    compiled = len(analysis.graph.eqns) >= COMPILE_FROM_EQUATIONS
    if _replay_error(analysis, leaves, consts, plans, cut, probe, compiled=compiled) is None:
        return plans
    failed = {}
    for name in cut:
        reason = _replay_error(analysis, leaves, consts, plans, [name], probe)
        if reason is not None:
            failed[name] = reason
    plans = _whole(analysis, plans, failed)
    rest = [name for name in cut if name not in failed]
    reason = _replay_error(analysis, leaves, consts, plans, rest, probe) if rest else None
    if reason is not None:  # each passes alone, not together: trust none of them
        plans = _whole(analysis, plans, {name: f"{reason} (with other groups cut)" for name in rest})
    return plans


def probe_inputs(analysis: Analysis, inputs) -> list:
    """Random normal arrays for the floating-point inputs (a constant sample hides wrong maps)."""
    g = analysis.graph
    rng = np.random.default_rng(0)
    out = []
    for vid, given in zip(g.input_ids, inputs):
        dtype = g.dtypes[vid]
        if np.issubdtype(dtype, np.floating):
            out.append(rng.normal(size=g.shapes[vid]).astype(dtype))
        else:
            out.append(np.zeros(g.shapes[vid], dtype) if isinstance(given, jax.ShapeDtypeStruct) else given)
    return out


def _own_mask_failures(analysis: Analysis, consts: Mapping, plans: Mapping, mask_config, keep: set) -> dict:
    failed = {}
    for grp in analysis.groups:
        p = plans[grp.name]
        if not p.prunable or grp.name in keep or len(p.kept) == p.total:
            continue
        alive = np.zeros(grp.size, bool)
        alive[p.kept] = True
        for u in grp.units:
            gamma, beta = U.gamma_beta(u, consts.__getitem__)
            pi = M.prune_probability(
                M.deactivation_probability(gamma, beta, mask_config.eps), mask_config.k, mask_config.c
            )
            own = np.asarray(M.hard_mask(pi)) > 0
            mine, idx = grp.positions(analysis.slot_labels(u.out, u.axis))
            lost = mine[own[mine] & ~alive[idx]]
            if lost.size:
                failed[grp.name] = (
                    f"self-check: the cut drops channels {lost[:4].tolist()} that unit {u.name}'s mask keeps"
                )
                break
    return failed


def _replay_error(analysis: Analysis, leaves, consts: Mapping, plans: Mapping, names, probe, compiled=False):
    """None if the replay with only ``names`` cut equals the dense function with their channels
    zeroed at the unit outputs; else why not. ``compiled``: both sides as one cheaply compiled
    program (else op by op)."""
    alive = I.alive_of(analysis, {name: plans[name] for name in names})
    kept = I.kept_indices(analysis, alive)
    sliced, folded = I.sliced(analysis, leaves, consts, kept)
    masks = I.unit_masks(analysis, alive)

    def both(leaves, sliced, folded, probe):
        compact = I.run(analysis, sliced, probe, kept=kept, folded=folded, formulation=None)
        dense = I.run(analysis, leaves, probe, masks=masks, formulation=None)
        return compact, dense

    args = (list(leaves), sliced, folded, probe)
    try:
        if compiled:
            compact, dense = jax.jit(both).lower(*args).compile(compiler_options=CHEAP_COMPILE)(*args)
        else:
            compact, dense = both(*args)
    except Exception as err:  # noqa: BLE001 - a primitive the replay cannot follow: the group is refused
        return f"self-check: the compact replay failed: {type(err).__name__}: {str(err).splitlines()[0]}"
    worst = 0.0
    for c, d in zip(compact, dense):
        c, d = np.asarray(c), np.asarray(d)
        if not np.issubdtype(d.dtype, np.inexact):
            if not np.array_equal(c, d):
                return "self-check: the compact replay differs from the dense model with the channels zeroed"
            continue
        worst = max(worst, float(np.max(np.abs(c - d), initial=0.0)) / max(1.0, float(np.max(np.abs(d), initial=0.0))))
    if not worst <= TOLERANCE:
        return (
            f"self-check: the compact replay differs from the dense model with the channels zeroed (error {worst:.2g})"
        )
    return None


def _whole(analysis: Analysis, plans: dict, failed: Mapping) -> dict:
    if not failed:
        return plans
    plans = dict(plans)
    for grp in analysis.groups:
        if grp.name in failed:
            reason = failed[grp.name]
            p = plans[grp.name]
            plans[grp.name] = dataclasses.replace(p, kept=np.arange(p.total), prunable=False, reason=reason)
            grp.prunable, grp.reason = False, reason
    return plans
