"""``prune_model``: physical channel pruning of any Flax CNN, linen or NNX, found from its computation.

    compact_model, compact_variables = prune_model(model, variables, x, train=False)   # linen
    compact_module = prune_model(module, x)                                             # NNX (eval mode)

The model's evaluation is traced (``graph.ir``), its channel groups and BN-ReLU units found
(``graph.groups``), every prunable group's kept channels decided (the SCP hard masks of its units
by default: a channel goes only when every unit of the group drops it; ``keep=`` overrides;
``round_to=`` pads widths with the most alive channels; a group never goes empty -- its most alive
channel stays, which is exact because a dropped channel's output is 0 anyway), and the compact
model replays the traced equations on sliced arrays (``compact.interpret``, which says why an
interpreter). The compact model equals the dense network with every unit's output multiplied by
its group's 0/1 keep mask (``masked_reference``); where the dropped channels are dead it equals the
dense network.

On a CPU the built-in models use ``fast_conv.Conv``, whose 'auto' formulation emits im2col/matmul for
some shapes; linen models are traced under ``flax_conv_formulation('xla')`` so every conv is one
``conv_general_dilated`` equation (simpler groups), and the replay picks the fast formulation for
the compact shapes. A new input shape (another batch size) retraces the dense model on abstract
shapes (no compute) and maps the decisions by group name.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from soft_prune_jax.compact import interpret as I
from soft_prune_jax.compact import verify
from soft_prune_jax.compact.interpret import alive_of
from soft_prune_jax.graph import groups as G
from soft_prune_jax.graph import ir
from soft_prune_jax.graph import units as U
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.scp import masks as M


class PruneError(ValueError):
    """Bad arguments to ``prune_model`` (unknown group names, masks of the wrong size, ...)."""


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    name: str
    kept: np.ndarray  # kept channel positions of the group, sorted
    total: int
    from_mask: int  # channels the masks (or keep=) kept before keep-one / round_to
    prunable: bool
    reason: str


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "shape") and hasattr(x, "dtype")


def _abstract(tree):
    """Array leaves as ShapeDtypeStructs; other call arguments (an nnx.Rngs, flags) as they are."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if ir._is_array(a) else a, tree, is_leaf=ir._opaque
    )


class _Arg:
    """A keyword argument in a cache key: equal when the traced graph would be the same."""

    def __init__(self, value):
        self.value, self.key = value, ir.static_key([value])

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Arg) and self.key == other.key


def _hashable(kwargs: Mapping) -> tuple:
    return tuple(sorted((k, v if isinstance(v, _Arg) else _Arg(v)) for k, v in kwargs.items()))


def _kwargs(key: tuple) -> dict:
    return {k: a.value for k, a in key}


def _mask_config(model, mask_config) -> M.MaskConfig:
    if mask_config is not None:
        return mask_config
    own = getattr(model, "mask", None)
    return own if isinstance(own, M.MaskConfig) else M.MaskConfig()


def decide(
    analysis: G.Analysis,
    consts: Mapping,
    *,
    keep: Optional[Mapping] = None,
    round_to: int = 1,
    mask_config: M.MaskConfig = M.MaskConfig(),
) -> dict:
    """{group name: GroupPlan} for every group; unprunable groups keep everything."""
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise PruneError(f"round_to={round_to!r} is invalid: expected an int >= 1 (1 = no alignment)")
    keep = dict(keep or {})
    by_name = {grp.name: grp for grp in analysis.groups}
    unknown = sorted(set(keep) - set(by_name))
    if unknown:
        prunable = [n for n, grp in by_name.items() if grp.prunable]
        raise PruneError(
            f"keep names unknown groups {unknown[:3]}; prunable groups: {', '.join(prunable[:8])}"
            f"{' ...' if len(prunable) > 8 else ''}"
        )
    plans = {}
    for grp in analysis.groups:
        n = grp.size
        if not grp.prunable:
            if grp.name in keep and not np.all(_as_mask(keep[grp.name], n, grp.name)):
                raise PruneError(f"group {grp.name!r} cannot lose channels: {grp.reason}")
            plans[grp.name] = GroupPlan(grp.name, np.arange(n), n, n, False, grp.reason)
            continue
        z = np.full(n, np.inf)
        mask = np.zeros(n, bool)
        for u in grp.units:
            gamma, beta = U.gamma_beta(u, consts.__getitem__)
            mine, idx = grp.positions(analysis.slot_labels(u.out, u.axis))
            pi = np.asarray(
                M.prune_probability(
                    M.deactivation_probability(gamma, beta, mask_config.eps), mask_config.k, mask_config.c
                )
            )
            # Several unit channels can reach one group channel (a depthwise multiplier, a shuffle, split
            # halves added): unbuffered reductions, so the channel stays if any of them is alive.
            np.logical_or.at(mask, idx, (np.asarray(M.hard_mask(pi)) > 0)[mine])
            np.minimum.at(z, idx, np.asarray(M.deactivation_z(gamma, beta, mask_config.eps))[mine])
        if grp.name in keep:
            mask = _as_mask(keep[grp.name], n, grp.name)
        from_mask = int(mask.sum())
        order = np.argsort(z, kind="stable")  # most alive first
        if not mask.any():
            mask[order[0]] = True
        target = min(n, -(-int(mask.sum()) // round_to) * round_to)
        extra = [i for i in order if not mask[i]][: target - int(mask.sum())]
        mask[extra] = True
        plans[grp.name] = GroupPlan(grp.name, np.flatnonzero(mask), n, from_mask, True, "")
    return plans


def _as_mask(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == bool or (arr.shape == (n,) and np.isin(arr, (0, 1)).all() and arr.dtype.kind == "f"):
        if arr.shape != (n,):
            raise PruneError(f"keep[{name!r}] is a mask of shape {arr.shape}, expected ({n},)")
        return arr.astype(bool)
    idx = arr.reshape(-1).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise PruneError(f"keep[{name!r}] has indices outside [0, {n}): {idx.tolist()[:5]}")
    mask = np.zeros(n, bool)
    mask[idx] = True
    return mask


def check_refold(analysis: G.Analysis, kept: Mapping) -> None:
    """Every variable-only equation that a cut evaluates once can be recomputed from kept channels."""
    g = analysis.graph
    for e in g.eqns:
        if e.index in analysis.fold and any(
            not isinstance(a, ir.Lit) and any((a, ax) in kept for ax in range(len(g.shapes[a]))) for a in e.ins
        ):
            raise I.CompactError(
                f"{e.describe()}: a variable-only computation over channels the cut drops (evaluated once on "
                "the dense variables) cannot be recomputed from the kept ones: this model cannot be fine-tuned "
                "compact"
            )


class Program:
    """Replays the traced model with cut channels; retraces (abstractly) for every new input shape."""

    def __init__(self, trace_fn, dense_leaves, treedef, strip, plans, folded_order, call_key, first):
        self.trace_fn = trace_fn  # (abstract variables tree, inputs, kwargs) -> Graph
        self.dense_leaves = dense_leaves  # ShapeDtypeStructs of the dense variable leaves
        self.treedef = treedef
        self.strip = strip
        self.plans = plans
        self.folded_order = folded_order  # sliced outputs of folded equations, in program order
        self.cache = {call_key: first}
        self.formulation = "auto"
        # False: variable-only equations are evaluated once, on the variables the cut was made from;
        # True: recomputed from the variables given (a fine-tuned compact model's, ``compact.trainable``).
        self.recompute = False

    def prepared(self, inputs, kwargs_key):
        key = (ir.static_key(inputs), kwargs_key)
        if key not in self.cache:
            dense = jax.tree_util.tree_unflatten(self.treedef, self.dense_leaves)
            g = self.trace_fn(dense, _abstract(list(inputs)), _kwargs(kwargs_key))
            analysis = G.analyze(g, self.strip)
            names = {grp.name: grp for grp in analysis.groups}
            for name, p in self.plans.items():
                if len(p.kept) < p.total and (name not in names or names[name].size != p.total):
                    raise I.CompactError(
                        f"retracing for inputs {key[0]} changed channel group {name!r}; "
                        f"the model's structure depends on the input shape"
                    )
            alive = alive_of(analysis, self.plans)
            kept = I.kept_indices(analysis, alive)
            outs = I.folded_outputs(analysis)
            if len(outs) != len(self.folded_order):
                raise I.CompactError(f"retracing for inputs {key[0]} changed the variable-only computation")
            self.cache[key] = (analysis, kept, dict(zip(outs, self.folded_order)))
        return self.cache[key]

    def __call__(self, leaves, inputs, kwargs_key):
        analysis, kept, folded = self.prepared(inputs, kwargs_key)
        if self.recompute:
            check_refold(analysis, kept)
            folded = None
        outs = I.run(analysis, leaves, ir.array_inputs(inputs), kept=kept, folded=folded, formulation=self.formulation)
        tree = analysis.graph.out_tree
        return jax.tree_util.tree_unflatten(tree, outs) if tree is not None else outs


class CompactLinen:
    """The compact linen model: ``apply(compact_variables, x, **kwargs)`` like the original."""

    def __init__(self, program: Program, treedef, defaults: Mapping):
        self.program, self.treedef, self.defaults = program, treedef, dict(defaults)

    def apply(self, variables, *inputs, **kwargs):
        leaves = self.treedef.flatten_up_to(variables)
        return self.program(leaves, inputs, _hashable({**self.defaults, **kwargs}))

    def __call__(self, *args, **kwargs):
        raise TypeError("a compact linen model is called as compact_model.apply(compact_variables, x, ...)")


class CompactModule(nnx.Module):
    """The compact NNX module: called like the original; its sliced arrays are nnx Variables."""

    def __init__(self, program: Program, variables, paths, defaults: Mapping):
        self.variables = nnx.List(variables)
        self.paths = tuple(paths)
        self.program = program
        self.defaults = _hashable(defaults)

    def __call__(self, *inputs, **kwargs):
        leaves = [v.get_value() for v in self.variables]
        return self.program(leaves, inputs, _hashable({**_kwargs(self.defaults), **kwargs}))


def keep_listed_whole(analysis: G.Analysis, keep: Optional[Mapping[str, Any]], patterns) -> Optional[dict]:
    """``keep`` plus every channel of each prunable group with a unit named by ``patterns`` (fnmatch;
    a module's ``keep_whole``, e.g. the pre-activation ResNet's shared BN-ReLU, which SCP never
    masks), unless ``keep`` already says what that group keeps."""
    if not patterns:
        return keep
    out = dict(keep or {})
    for grp in analysis.groups:
        if (
            grp.prunable
            and grp.name not in out
            and any(fnmatch.fnmatchcase(u.name, p) for u in grp.units for p in patterns)
        ):
            out[grp.name] = np.ones(grp.size, bool)
    return out


def _build(trace_fn, variables, inputs, kwargs, strip, keep, round_to, mask_config, check, keep_whole=()):
    g = trace_fn(variables, list(inputs), kwargs)
    analysis = G.analyze(g, strip)
    keep = keep_listed_whole(analysis, keep, keep_whole)
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    consts = I.constant_values(analysis, leaves)
    plans = decide(analysis, consts, keep=keep, round_to=round_to, mask_config=mask_config)
    if check:
        plans = verify.check_plans(analysis, leaves, consts, plans, ir.array_inputs(inputs), mask_config, keep or ())
    alive = alive_of(analysis, plans)
    kept = I.kept_indices(analysis, alive)
    sliced, folded_of = I.sliced(analysis, leaves, consts, kept)
    outs = I.folded_outputs(analysis)
    folded = [folded_of[o] for o in outs]
    key = (ir.static_key(inputs), _hashable(kwargs))
    program = Program(
        trace_fn,
        [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves],
        treedef,
        strip,
        plans,
        folded,
        key[1],
        (analysis, kept, dict(zip(outs, folded))),
    )
    program.cache[key] = program.cache.pop(key[1])
    program.alive, program.analysis = alive, analysis
    return program, treedef, sliced


def _linen_trace(model):
    def trace_fn(variables, inputs, kwargs):
        with fast_conv.flax_conv_formulation("xla"):
            return ir.trace(lambda v, *xs: model.apply(v, *xs, **kwargs), variables, *inputs)

    return trace_fn


def _nnx_trace(graphdef):
    def trace_fn(state, inputs, kwargs):
        with fast_conv.flax_conv_formulation("xla"):
            return ir.trace(lambda s, *xs: nnx.merge(graphdef, s)(*xs, **kwargs), state, *inputs)

    return trace_fn


def prune_model(
    model,
    *args,
    keep: Optional[Mapping[str, Any]] = None,
    round_to: int = 1,
    mask_config: Optional[M.MaskConfig] = None,
    check: bool = True,
    **kwargs,
):
    """Physically prunes a linen model (returns ``(compact_model, compact_variables)``) or an NNX
    module (returns the compact module). See the module docstring.

    linen: ``prune_model(model, variables, sample_input, **apply_kwargs)``.
    NNX: ``prune_model(module, sample_input, *more_inputs, **call_kwargs)`` (traced in eval mode).
    keep: {group name: kept channel indices (ints) or a mask over the group's channels (bools or
      0./1. floats)}; other prunable groups follow their units' SCP hard masks. Group names and
      sizes: ``channel_groups``. round_to: pad kept widths to multiples (most alive channels first).
      A module's ``keep_whole`` (fnmatch patterns of unit names, a class attribute) keeps every
      channel of the groups of those units, unless ``keep`` names them.
    mask_config: the SCP mask hyper-parameters (default: the model's own ``mask`` or the paper's).
    check: verify every group's cut on this model before returning (``compact.verify``); a group that
      fails is left whole with the reason in its plan. On by default.
    """
    whole = tuple(getattr(model, "keep_whole", ()) or ())  # the module's own groups to keep whole
    if isinstance(model, nnx.Module):
        if not args:
            raise PruneError("prune_model(module, sample_input, ...): a sample input is needed to trace the module")
        copy = nnx.merge(*nnx.split(model))
        copy.eval()
        graphdef, state = nnx.split(copy)
        inputs = list(args)
        program, _, sliced = _build(
            _nnx_trace(graphdef),
            state,
            inputs,
            kwargs,
            0,
            keep,
            round_to,
            _mask_config(model, mask_config),
            check,
            whole,
        )
        flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
        variables = []
        for (_, var), arr in zip(flat, sliced):
            cls = type(var) if isinstance(var, nnx.Variable) else nnx.Variable
            variables.append(cls(jnp.asarray(arr) if not I._is_key(arr) else arr))
        paths = ["/".join(ir.leaf_path(p)) for p, _ in flat]
        return CompactModule(program, variables, paths, kwargs)
    if isinstance(model, nn.Module):
        if len(args) < 2:
            raise PruneError(
                "prune_model(model, variables, sample_input, *more_args, **apply_kwargs) takes the variables "
                f"and a sample input for a linen model; got {len(args)} positional arguments"
            )
        variables, inputs = args[0], list(args[1:])
        program, treedef, sliced = _build(
            _linen_trace(model),
            variables,
            inputs,
            kwargs,
            1,
            keep,
            round_to,
            _mask_config(model, mask_config),
            check,
            whole,
        )
        compact_vars = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in sliced])
        return CompactLinen(program, treedef, kwargs), compact_vars
    raise TypeError(f"prune_model takes a flax.linen Module or a flax.nnx Module, got {type(model).__name__}")


def channel_groups(model, *args, **kwargs) -> list:
    """The channel groups of a model, called like ``prune_model`` (``graph.groups.Group``: name,
    size, members (variable path, axis, index map), units, prunable, and the reason if not)."""
    if isinstance(model, nnx.Module):
        copy = nnx.merge(*nnx.split(model))
        copy.eval()
        graphdef, state = nnx.split(copy)
        return G.analyze(_nnx_trace(graphdef)(state, list(args), kwargs), 0).groups
    if isinstance(model, nn.Module) and len(args) >= 2:
        return G.analyze(_linen_trace(model)(args[0], list(args[1:]), kwargs), 1).groups
    raise TypeError(
        f"channel_groups takes (linen model, variables, x, **kwargs) or (nnx module, x, ...), "
        f"got {type(model).__name__} with {len(args)} positional arguments"
    )


def program_of(compact) -> Program:
    return compact.program


def masked_reference(compact, dense_variables, *inputs, **kwargs):
    """The dense network with each unit's output times its group's keep mask: what ``compact`` equals.

    ``dense_variables``: the linen variables, or the NNX module's ``nnx.state`` (eval mode).
    """
    program = compact.program
    analysis = program.analysis
    leaves = jax.tree_util.tree_leaves(dense_variables)
    masks = I.unit_masks(analysis, program.alive)
    outs = I.run(analysis, leaves, ir.array_inputs(inputs), masks=masks, formulation=None)
    tree = analysis.graph.out_tree
    return jax.tree_util.tree_unflatten(tree, outs) if tree is not None else outs


def prune_traced(
    trace_fn,
    variables,
    inputs,
    *,
    keep: Optional[Mapping[str, Any]] = None,
    round_to: int = 1,
    mask_config: Optional[M.MaskConfig] = None,
    strip: int = 1,
    call_kwargs: Optional[Mapping] = None,
    check: bool = True,
):
    """``prune_model`` for a model given as ``trace_fn(variables, inputs, kwargs) -> ir.Graph`` over a plain
    variables pytree (a user model behind ``models.user.UserModel``, linen or NNX alike).

    Returns ``(compact, compact_variables)``; ``compact.apply(compact_variables, *inputs, **call_kwargs)``
    and ``compact.program.plans`` (GroupPlan per group) as for a linen model.
    """
    config = mask_config or M.MaskConfig()
    program, treedef, sliced = _build(
        trace_fn, variables, list(inputs), dict(call_kwargs or {}), strip, keep, round_to, config, check
    )
    compact_vars = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in sliced])
    return CompactLinen(program, treedef, dict(call_kwargs or {})), compact_vars
