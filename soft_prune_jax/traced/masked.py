"""SCP masks inserted into a user's model from outside: a traced, masked replay of its apply.

Why a replay of the traced computation rather than method interception or wrapping BN classes:
the units are found from the algebra of the *evaluation* graph (``graph.units``: subtract a mean,
scale by gamma / sqrt(var + eps), add beta, ReLU), whatever class wrote them -- ``nn.BatchNorm``,
``nnx.BatchNorm`` or a model zoo's own copy -- and only some of them are in prunable groups
(``graph.groups``). The same replay handles linen and NNX, needs no knowledge of the classes, and
leaves the user's code untouched. So:

* once (``UnitSet.analyze``): trace the model in evaluation mode, analyse its channel groups, keep
  the units of prunable groups, and for each record the parameter leaves its affine chain reads
  (to find it again in other traces), its running-statistics leaves, and its (gamma, beta) as a
  function of the params (``gamma_beta``: the chain's algebra evaluated with jnp, the running
  statistics held at their initial values -- for a BN they cancel: gamma = A sqrt(var + eps));
* every traced call (``MaskedModel.apply``, inside the jitted / pmapped / shard_mapped step, so a
  BN with ``axis_name='batch'`` sees its axis): trace the user's apply in the mode asked for, find
  each unit's ReLU again by the parameter leaves of the affine chain before it (in training mode
  the mean and variance are computed from the batch, so the evaluation-mode recogniser does not
  apply), and replay the equations with the unit's output multiplied by its mask: a relaxed-
  Bernoulli sample per channel in training (key ``fold_in(step key, unit index)``, the same on every
  replica), the hard mask [pi < 0.5] at evaluation (a group it would empty keeps its most alive
  channel, as the cut does), or fixed 0/1 masks (the hard-masked reference of the compact model,
  which ``compact.trainable`` fine-tunes). Running statistics are
  updated only where the sample says "keep": ``where(keep, new, old)`` on the unit's mean/var outputs.

The sparsity penalty covers exactly these units: ``unit_view(params)`` presents them to the method
plug-ins as masked BN layers ``{'masked_bn:<unit>': {'scale': gamma, 'bias': beta}}``, so SCP's
lambda * sum(beta + s |gamma|) and Network Slimming's L1 run unchanged. Nested calls are inlined by
the trace, so custom_jvp rules inside the model (e.g. ``nn.relu``'s) are differentiated through
their bodies; the training trace keeps custom_vjp calls whole (a unit inside one: inlined too), so
their own backward rules run (``ops.conv_grad``'s weight gradients behind ``fast_conv.Conv``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from soft_prune_jax.graph import groups as G
from soft_prune_jax.graph import ir
from soft_prune_jax.graph.ir import Lit
from soft_prune_jax.graph.units import is_zero_constant
from soft_prune_jax.models.user import STATS, UserModel
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.scp import masks as M
from soft_prune_jax.scp.masks import GUMBEL_RNG

VIEW_PREFIX = M.MASKED_PREFIX + ":"
_PASS = frozenset({"convert_element_type", "copy", "copy_p"})
_AFFINE = frozenset({"add", "sub", "mul", "div"})
# Kept whole in the training trace, so the replay is differentiated by their own rules (e.g.
# ops.conv_grad's weight gradients) rather than through their forward bodies.
CUSTOM_VJP = ("custom_vjp_call", "custom_vjp_call_jaxpr")


class MaskingError(RuntimeError):
    """A unit found in evaluation mode could not be found again in another trace of the model."""


@dataclasses.dataclass(frozen=True)
class MaskedUnit:
    name: str  # the BN's path, e.g. 'block0/bn1'
    group: str  # its channel group
    channels: int
    axis: int
    params_leaves: frozenset  # paths of the params its affine chain reads
    stats_paths: tuple  # paths of its running statistics (collection first)


def _chain_vectors(g: ir.Graph, relu) -> tuple[Optional[int], list]:
    """(activation value before the affine chain, the chain's vector operands) of a ReLU equation."""
    live = [a for a in relu.ins if not isinstance(a, Lit) and not is_zero_constant(g, a)]
    zeros = [a for a in relu.ins if isinstance(a, Lit) or is_zero_constant(g, a)]
    if len(live) != 1 or len(zeros) != 1:
        return None, []
    cur = live[0]
    while (p := g.producer.get(cur)) is not None and p.name in _PASS and len(g.uses.get(cur, [])) == 1:
        cur = p.ins[0]
    shape, vectors = g.shapes[cur], []
    while (p := g.producer.get(cur)) is not None and p.name in _AFFINE and len(g.uses.get(cur, [])) == 1:
        full = [j for j, a in enumerate(p.ins) if not isinstance(a, Lit) and g.shapes[a] == shape]
        if len(full) != 1:
            break
        other = p.ins[1 - full[0]]
        if not isinstance(other, Lit):
            vectors.append(other)
        cur = p.ins[full[0]]
    return cur, vectors


def _leaves_behind(g: ir.Graph, vectors: Sequence[int], size: int) -> set:
    """Variable leaves reachable backwards from ``vectors`` through values of at most ``size`` elements."""
    var_ids, seen, found, todo = set(g.variable_ids), set(), set(), list(vectors)
    while todo:
        v = todo.pop()
        if isinstance(v, Lit) or v in seen or int(np.prod(g.shapes[v])) > size:
            continue
        seen.add(v)
        if v in var_ids:
            found.add(g.path_of(v))
            continue
        e = g.producer.get(v)
        if e is not None:
            todo.extend(a for a in e.ins if not isinstance(a, Lit))
    return found


def locate(g: ir.Graph, units: Sequence[MaskedUnit]) -> dict:
    """{unit index: the value id of its ReLU output in ``g``}; every unit must be found exactly once."""
    by_leaves = {}
    for e in g.eqns:
        if e.name != "max" or len(e.ins) != 2:
            continue
        _, vectors = _chain_vectors(g, e)
        if not vectors:
            continue
        shape = g.shapes[e.outs[0]]
        leaves = {p for p in _leaves_behind(g, vectors, max(shape[-1], 1)) if p and p[0] == "params"}
        for i, u in enumerate(units):
            if leaves & u.params_leaves and len(shape) > u.axis and shape[u.axis] == u.channels:
                by_leaves.setdefault(i, []).append(e.outs[0])
    missing = [(u.name, len(by_leaves.get(i, []))) for i, u in enumerate(units) if len(by_leaves.get(i, [])) != 1]
    if missing:
        raise MaskingError(
            f"units found other than once in this trace of the model (name, times): {missing[:3]}; expected "
            "once each (the model's structure depends on its mode)"
        )
    return {i: vals[0] for i, vals in by_leaves.items()}


def replay(g: ir.Graph, leaves, inputs, masks: Mapping[int, Any]) -> list:
    """The graph's outputs, each value in ``masks`` multiplied by its mask where it is computed."""
    env = dict(zip(g.variable_ids, leaves))
    env.update(g.consts)
    env.update(zip(g.input_ids, inputs))
    for e in g.eqns:
        ins = [a.value if isinstance(a, Lit) else env[a] for a in e.ins]
        params = e.prim.get_bind_params(e.params) if e.name in CUSTOM_VJP else e.params
        res = e.prim.bind(*ins, **params)
        outs = list(res) if e.prim.multiple_results else [res]
        for o, v in zip(e.outs, outs):
            env[o] = v * masks[o].astype(v.dtype) if o in masks else v
    return [env[o] for o in g.output_ids]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


@dataclasses.dataclass
class UnitSet:
    """The units SCP masks in one user model, found once from its evaluation graph (module docstring)."""

    units: list  # MaskedUnit of every unit in a prunable group
    skipped: dict  # unit name -> why it gets no mask (its group is kept whole)
    analysis: G.Analysis  # of the evaluation graph the units were found in
    reference: dict  # every non-params collection, as at analysis time (held fixed in gamma_beta)
    _units_of: list  # per MaskedUnit: its graph.units.Unit in ``analysis``
    whole: dict = dataclasses.field(default_factory=dict)  # group -> size: prunable, kept whole by the model

    @classmethod
    def analyze(cls, user: UserModel, variables: Mapping[str, Any], x) -> UnitSet:
        # every conv as one conv_general_dilated equation (``fast_conv.Conv`` may emit im2col), as prune_model traces
        with fast_conv.flax_conv_formulation("xla"):
            g = ir.trace(lambda v, x: user.apply(v, x, train=False), dict(variables), x)
        analysis = G.analyze(g, strip=1)
        units, skipped, found, whole = [], {}, [], {}
        for grp in analysis.groups:
            listed = [(u.name, p) for u in grp.units for p in user.keep_whole if fnmatch.fnmatchcase(u.name, p)]
            if grp.prunable and listed:  # the model asks for it whole (the paper has no mask there)
                whole[grp.name] = grp.size
                for u in grp.units:
                    skipped[u.name] = (
                        f"kept whole: unit {listed[0][0]!r} matches the model's keep_whole {listed[0][1]!r}"
                    )
                continue
            for u in grp.units:
                if not grp.prunable:
                    skipped[u.name] = grp.reason
                    continue
                ops = [vec for _, vec, _ in u.chain] + [u.mean, u.norm]
                size = g.shapes[u.out][u.axis]
                leaves = _leaves_behind(g, [v for v in ops if not isinstance(v, Lit)], size)
                params = frozenset(p for p in leaves if p[0] == "params")
                stats = tuple(sorted(p for p in leaves if p[0] == STATS))
                units.append(MaskedUnit(u.name, grp.name, size, u.axis, params, stats))
                found.append(u)
        order = sorted(range(len(units)), key=lambda i: found[i].relu)
        reference = {k: v for k, v in variables.items() if k != "params"}
        return cls([units[i] for i in order], skipped, analysis, reference, [found[i] for i in order], whole)

    def gamma_beta(self, params) -> list:
        """[(gamma, beta)] per unit as jnp functions of ``params`` (differentiable)."""
        g = self.analysis.graph
        variables = {**self.reference, "params": params}
        env = dict(zip(g.variable_ids, jax.tree_util.tree_leaves(variables)))
        env.update(g.consts)

        def value(a):
            if isinstance(a, Lit):
                return jnp.asarray(a.value)
            if a not in env:
                e = g.producer[a]
                outs = e.prim.bind(*[value(b) for b in e.ins], **e.params)
                for o, v in zip(e.outs, outs if e.prim.multiple_results else [outs]):
                    env[o] = v
            return env[a]

        out = []
        for unit, u in zip(self.units, self._units_of):
            A, B = jnp.float32(1.0), jnp.float32(0.0)
            for op, vec, lhs in u.chain:
                v = jnp.reshape(value(vec), (-1,))
                v = v[0] if v.size == 1 else v
                if op == "mul":
                    A, B = A * v, B * v
                elif op == "div":
                    A, B = A / v, B / v
                elif op == "add":
                    B = B + v
                elif lhs:
                    B = B - v
                else:
                    A, B = -A, v - B
            mean, norm = jnp.reshape(value(u.mean), (-1,)), jnp.reshape(value(u.norm), (-1,))
            n = unit.channels
            gamma = jnp.broadcast_to(A * jnp.sqrt(norm), (n,)).astype(jnp.float32)
            beta = jnp.broadcast_to(A * mean + B, (n,)).astype(jnp.float32)
            out.append((gamma, beta))
        return out

    def unit_view(self, params) -> dict:
        """The units as masked BN layers for the method plug-ins: {'masked_bn:<unit>': {scale, bias}}."""
        return {
            VIEW_PREFIX + u.name: {"scale": gamma, "bias": beta}
            for u, (gamma, beta) in zip(self.units, self.gamma_beta(params))
        }

    def group_keep(self, unit_masks: Mapping[str, Any]) -> dict:
        """{group: 0/1 mask} from per-unit masks keyed by unit or view name: a channel stays if any
        unit of its group keeps it (a dropped channel must be zero at every unit output). Groups the
        model keeps whole (``keep_whole``) keep every channel."""
        out = {name: np.ones(size, bool) for name, size in self.whole.items()}
        for u in self.units:
            mask = unit_masks.get(u.name, unit_masks.get(VIEW_PREFIX + u.name))
            if mask is None:
                continue
            keep = out.setdefault(u.group, np.zeros(self.analysis.group(u.group).size, bool))
            # unbuffered: several of a unit's channels may reach one group channel
            np.logical_or.at(keep, self.channel_index(u), np.asarray(mask).reshape(-1) > 0.5)
        return out

    def channel_index(self, unit: MaskedUnit) -> np.ndarray:
        """The position in its group of each of ``unit``'s channels."""
        grp = self.analysis.group(unit.group)
        pos = {int(lab): k for k, lab in enumerate(grp.labels)}
        return np.array([pos[int(x)] for x in self.analysis.slot_labels(self._unit(unit).out, unit.axis)], np.int64)

    def unit_masks_of(self, kept: Mapping[str, Sequence[int]]) -> dict:
        """{unit name: 0/1 float mask} of each unit from its group's kept channel positions."""
        out = {}
        for u in self.units:
            if u.group not in kept:
                continue
            grp = self.analysis.group(u.group)
            alive = np.zeros(grp.size, bool)
            alive[np.asarray(kept[u.group], np.int64)] = True
            out[u.name] = alive[self.channel_index(u)].astype(np.float32)
        return out

    def _unit(self, unit: MaskedUnit):
        return self._units_of[self.units.index(unit)]


class MaskedModel:
    """The user's model with SCP's masks on its units, called like a built-in linen model.

    mode: 'soft' (SCP: relaxed-Bernoulli masks in training, hard masks at evaluation), 'fixed' (the
    0/1 masks ``fixed`` in both), or 'none' (the user's model as it is: dense and slimming training).
    ``init``, ``apply(variables, x, train=..., rngs=..., mutable=...)`` and ``clone`` are what the
    trainer calls on a module (``training.loop.fit``).
    """

    def __init__(
        self,
        user: UserModel,
        units: UnitSet,
        mode: str = "soft",
        mask: Optional[M.MaskConfig] = None,
        fixed: Optional[Mapping[str, np.ndarray]] = None,
    ):
        if mode not in ("soft", "fixed", "none"):
            raise ValueError(f"mode={mode!r} is invalid: expected 'soft', 'fixed' or 'none'")
        self.user, self.units, self.mode = user, units, mode
        self.mask = mask or M.MaskConfig()
        self.fixed = {k: np.asarray(v, np.float32) for k, v in (fixed or {}).items()}

    def clone(self, **_):  # BN axes are the user's own (axis_name='batch' is the trainer's axis)
        return self

    def init(self, rngs, x, train: bool = False):
        key = rngs["params"] if isinstance(rngs, Mapping) else rngs
        return self.user.init(key, x)

    def masks(self, params, key=None) -> list:
        """Per unit: its mask (soft sample with ``key``, hard without; the fixed one in 'fixed' mode)."""
        if self.mode == "fixed":
            return [
                jnp.asarray(self.fixed[u.name]) if u.name in self.fixed else jnp.ones((u.channels,))
                for u in self.units.units
            ]
        out, zs = [], []
        for i, (gamma, beta) in enumerate(self.units.gamma_beta(params)):
            pi = M.prune_probability(M.deactivation_probability(gamma, beta, self.mask.eps), self.mask.k, self.mask.c)
            out.append(M.hard_mask(pi) if key is None else M.soft_mask(jax.random.fold_in(key, i), pi, self.mask.tau))
            zs.append(M.deactivation_z(gamma, beta, self.mask.eps))
        return self._keep_one(out, zs) if key is None else out

    def _keep_one(self, hard: list, zs: list) -> list:
        """The hard masks with the cut's keep-one (``prune_model.decide``): a group whose units all drop
        every channel keeps its lowest-z channel, so the validation accuracy during training is the
        accuracy of the network the cut leaves (an empty plain-chain layer would make it constant)."""
        by_group: dict = {}
        for i, u in enumerate(self.units.units):
            by_group.setdefault(u.group, []).append((i, self.units.channel_index(u)))
        out = list(hard)
        for name, members in by_group.items():
            n = self.units.analysis.group(name).size
            alive, z = jnp.zeros(n), jnp.full(n, jnp.inf)
            for i, idx in members:
                alive = alive.at[idx].max(hard[i])
                z = z.at[idx].min(zs[i])
            fallback = jnp.arange(n) == jnp.argmin(z)
            for i, idx in members:
                out[i] = jnp.where(jnp.any(alive > 0), hard[i], fallback[idx].astype(hard[i].dtype))
        return out

    def _train_graph(self, variables, x, dropout):
        """(graph, unit locations) of the training-mode call: custom_vjp calls kept whole, unless a
        unit is inside one (then everything inlined, as the evaluation graph is)."""

        def fn(v, x, k):
            return self.user.apply(v, x, train=True, rngs={"dropout": k})

        g = ir.trace(fn, variables, x, dropout, opaque_calls=CUSTOM_VJP)
        try:
            return g, locate(g, self.units.units)
        except MaskingError:
            g = ir.trace(fn, variables, x, dropout)
            return g, locate(g, self.units.units)

    def apply(self, variables, x, train: bool = False, rngs=None, mutable=False):
        rngs = dict(rngs or {})
        key = rngs.get(GUMBEL_RNG)
        dropout = jax.random.fold_in(key, 1 << 20) if key is not None else jax.random.PRNGKey(0)
        if self.mode == "none" or not self.units.units:
            if not train:
                return self.user.apply(variables, x)
            return self.user.apply(variables, x, train=True, rngs={"dropout": dropout})
        masks = self.masks(variables["params"], key if (train and self.mode == "soft") else None)
        variables = dict(variables)
        if train:
            g, where = self._train_graph(variables, x, dropout)
            inputs = [x, dropout]
        else:
            g = ir.trace(lambda v, x: self.user.apply(v, x, train=False), variables, x)
            inputs = [x]
            where = locate(g, self.units.units)
        by_value = {}
        for i, u in enumerate(self.units.units):
            shape = [1] * len(g.shapes[where[i]])
            shape[u.axis] = u.channels
            by_value[where[i]] = jnp.reshape(masks[i], shape)
        outs = replay(g, jax.tree_util.tree_leaves(variables), inputs, by_value)
        result = jax.tree_util.tree_unflatten(g.out_tree, outs)
        if not train:
            return result
        logits, state = result
        stats = state[STATS]
        for i, u in enumerate(self.units.units):
            keep = jax.lax.stop_gradient(masks[i]) > 0.5  # the sample's argmax says "keep"
            for path in u.stats_paths:
                old, new = _get(variables, path), _get(stats, path[1:])
                if np.shape(new) == (u.channels,):
                    stats = _set(stats, path[1:], jnp.where(keep, new, old))
        return logits, {STATS: stats}


def describe(units: UnitSet, spec: str) -> str:
    """One line saying which units get masks (or that nothing can be pruned)."""
    if not units.units:
        why = "; ".join(f"{k}: {v}" for k, v in list(units.skipped.items())[:3]) or "no BN -> ReLU unit was found"
        return (
            f"config.model={spec!r} has no operation-aware unit in a prunable channel group ({why}): "
            "it trains, and nothing can be pruned"
        )
    return (
        f"config.model={spec!r}: {len(units.units)} operation-aware units get SCP masks "
        f"({', '.join(u.name for u in units.units[:6])}{' ...' if len(units.units) > 6 else ''})"
        + (f"; {len(units.skipped)} units in groups kept whole" if units.skipped else "")
    )


def log_units(units: UnitSet, spec: str) -> None:
    (logging.warning if not units.units else logging.info)("%s", describe(units, spec))
