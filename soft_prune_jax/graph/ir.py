"""A flat, inlined view of a traced model: every value has an integer id, every variable leaf a path.

``trace(fn, variables, *inputs)`` runs ``jax.make_jaxpr`` on ``fn(variables, *inputs)`` with the
variables flattened by ``jax.tree_util.tree_flatten_with_path``, so each input value of the jaxpr
is tied to the path of the array it holds. Nested jaxprs (jit/pjit, custom_jvp_call,
custom_vjp_call, checkpoint/remat, closed_call, core_call) are inlined: later passes (channel
groups, the compact interpreter) see one list of primitive equations and never have to map values
across call boundaries. Inlining is exact for evaluation: a call primitive only evaluates its body.
The forward-only bodies of custom_jvp/custom_vjp are what evaluation runs, so nothing is lost.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.extend import core as jcore

Path = tuple[str, ...]
# Call-like primitives whose body is inlined, and the param that holds it.
_BODY_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_CALLS = {
    "pjit",
    "jit",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "checkpoint",
    "remat",
    "closed_call",
    "core_call",
    "remat2",
    "custom_lin",
}


class GraphError(ValueError):
    """The model could not be traced into a graph these passes understand."""


@dataclasses.dataclass(frozen=True, eq=False)
class Lit:
    """A literal operand (a Python/NumPy scalar baked into an equation): a constant, never a value
    with channels. Compared by identity, so it is never mistaken for a value id in a set."""

    value: Any


@dataclasses.dataclass
class Eqn:
    index: int
    prim: Any  # a jax primitive; ``prim.name`` keys every rule table
    params: dict
    ins: list  # int value ids or Lit
    outs: list  # int value ids
    where: str  # the call stack of inlined bodies, for error messages

    @property
    def name(self) -> str:
        return self.prim.name

    def describe(self) -> str:
        return f"equation {self.index} ({self.name}{' in ' + self.where if self.where else ''})"


@dataclasses.dataclass
class Graph:
    shapes: list  # value id -> shape tuple
    dtypes: list  # value id -> dtype
    eqns: list
    variable_ids: list  # value ids of the variable leaves, in flatten order
    variable_paths: list  # their paths (tuple of str), same order
    input_ids: list  # value ids of the model's array inputs
    output_ids: list  # value ids of the model's outputs (flattened)
    consts: dict  # value id -> concrete array (closed-over constants, literal outputs)
    producer: dict = dataclasses.field(default_factory=dict)  # value id -> Eqn
    uses: dict = dataclasses.field(default_factory=dict)  # value id -> [(Eqn, operand position)]
    out_tree: Any = None  # pytree structure of the outputs

    def path_of(self, vid: int) -> Optional[Path]:
        if not hasattr(self, "_paths"):
            self._paths = dict(zip(self.variable_ids, self.variable_paths))
        return self._paths.get(vid)


def key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_path(path) -> Path:
    names = tuple(key_name(k) for k in path)
    # NNX state leaves end in the Variable's 'value' attribute: the array's path is the Variable's.
    return names[:-1] if len(names) > 1 and names[-1] == "value" else names


class _Builder:
    def __init__(self, opaque_calls: frozenset = frozenset()):
        self.shapes, self.dtypes, self.eqns, self.consts = [], [], [], {}
        self.opaque_calls = opaque_calls

    def new(self, aval) -> int:
        self.shapes.append(tuple(int(d) for d in aval.shape))
        self.dtypes.append(aval.dtype)
        return len(self.shapes) - 1

    def inline(self, jaxpr, consts: Sequence[Any], in_ids: Sequence[Any], where: str) -> list:
        env = {}
        for v, c in zip(jaxpr.constvars, consts):
            vid = self.new(v.aval)
            self.consts[vid] = (
                np.asarray(c)
                if not hasattr(c, "dtype") or not jax.dtypes.issubdtype(c.dtype, jax.dtypes.prng_key)
                else c
            )
            env[v] = vid
        for v, i in zip(jaxpr.invars, in_ids):
            env[v] = i

        def read(a):
            if isinstance(a, jcore.Literal):
                return Lit(a.val)
            return env[a]

        for e in jaxpr.eqns:
            ins = [read(a) for a in e.invars]
            body = None
            if e.primitive.name in _CALLS and e.primitive.name not in self.opaque_calls:
                for p in _BODY_PARAMS:
                    if p in e.params:
                        body = e.params[p]
                        break
            if body is not None:
                name = e.params.get("name", e.primitive.name)
                sub = f"{e.primitive.name}[{name}]" + (f" < {where}" if where else "")
                if isinstance(body, jcore.ClosedJaxpr):
                    outs = self.inline(body.jaxpr, body.consts, ins, sub)
                else:
                    outs = self.inline(body, (), ins, sub)
                for v, o in zip(e.outvars, outs):
                    env[v] = self._materialize(o)
                continue
            # Control flow (scan, while, cond) and other higher-order primitives stay opaque: no
            # channel rule knows them, so groups through them are left whole.
            outs = [self.new(v.aval) for v in e.outvars]
            self.eqns.append(Eqn(len(self.eqns), e.primitive, dict(e.params), ins, outs, where))
            for v, o in zip(e.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [self._materialize(read(v)) for v in jaxpr.outvars]

    def _materialize(self, value):
        if isinstance(value, Lit):
            arr = np.asarray(value.value)
            vid = self.new(jax.core.ShapedArray(arr.shape, arr.dtype))
            self.consts[vid] = arr
            return vid
        return value


def _opaque(x) -> bool:
    # An nnx.Rngs (or any NNX object) passed to a call is the model's business, not an input with channels.
    return isinstance(x, nnx.Pytree)


def _is_array(x) -> bool:
    # nnx.Rngs answers any attribute (rngs.shape is a stream), so NNX objects are ruled out first
    return not _opaque(x) and not isinstance(x, type) and hasattr(x, "shape") and hasattr(x, "dtype")


def array_inputs(inputs: Sequence[Any]) -> list:
    """The array leaves of call arguments: what the graph's ``input_ids`` stand for."""
    return [leaf for leaf in jax.tree_util.tree_leaves(list(inputs), is_leaf=_opaque) if _is_array(leaf)]


def _static_key(x):
    if isinstance(x, (bool, int, float, complex, str, bytes, type(None))):
        return (type(x).__name__, x)
    return type(x).__name__  # an Rngs, a callable...: traced once per kind, its values never enter the graph


def static_key(inputs: Sequence[Any]) -> tuple:
    """What of the call arguments, besides the arrays' shapes, the traced graph depends on."""
    leaves, tree = jax.tree_util.tree_flatten(list(inputs), is_leaf=_opaque)
    arrays = tuple((tuple(np.shape(x)), str(x.dtype)) for x in leaves if _is_array(x))
    return (tree, arrays, tuple(_static_key(x) for x in leaves if not _is_array(x)))


def trace(fn: Callable, variables: Any, *inputs: Any, opaque_calls: Sequence[str] = ()) -> Graph:
    """The flat graph of ``fn(variables, *inputs)``. Array leaves of the inputs are the graph's
    inputs; other arguments (an nnx.Rngs, flags, strings, None) pass through to ``fn`` as they are.
    ``opaque_calls``: call primitives kept as one equation instead of inlined (a replay that is
    differentiated keeps a custom_vjp's own gradient rule)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
    paths = [leaf_path(p) for p, _ in leaves]
    var_leaves = [leaf for _, leaf in leaves]
    call_leaves, in_tree = jax.tree_util.tree_flatten(list(inputs), is_leaf=_opaque)
    array_pos = [i for i, leaf in enumerate(call_leaves) if _is_array(leaf)]
    in_leaves = [call_leaves[i] for i in array_pos]
    n = len(var_leaves)
    out_tree_box = []

    def flat(*args):
        v = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(variables), args[:n])
        full = list(call_leaves)
        for i, a in zip(array_pos, args[n:]):
            full[i] = a
        ins = jax.tree_util.tree_unflatten(in_tree, full)
        out = fn(v, *ins)
        leaves_out, tree = jax.tree_util.tree_flatten(out)
        out_tree_box.append(tree)
        return leaves_out

    try:
        closed = jax.make_jaxpr(flat)(*var_leaves, *in_leaves)
    except Exception as err:  # noqa: BLE001 - any tracing failure is the user's model; say so in one line
        raise GraphError(f"tracing the model failed: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    b = _Builder(frozenset(opaque_calls))
    in_ids = [b.new(v.aval) for v in closed.jaxpr.invars]
    outs = b.inline(closed.jaxpr, closed.consts, in_ids, "")
    g = Graph(b.shapes, b.dtypes, b.eqns, in_ids[:n], paths, in_ids[n:], outs, b.consts)
    for e in g.eqns:
        for o in e.outs:
            g.producer[o] = e
        for j, a in enumerate(e.ins):
            if not isinstance(a, Lit):
                g.uses.setdefault(a, []).append((e, j))
    g.out_tree = out_tree_box[-1] if out_tree_box else None
    return g
