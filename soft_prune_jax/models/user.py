"""The model a config names, through one interface: a built-in architecture by its registry name
(``config.model = "resnet56"``) or a user's own Flax model (``config.model = "package.module:attribute"``).
Both are the same thing to every phase: a Flax module whose computation is traced (masks inserted by
replay, the cut, MACs, the export); nothing branches on which kind it is.

The attribute is a linen or NNX module class, or a factory returning a module instance; it is called
with ``num_classes=`` and ``**config.model_kwargs`` (an NNX one also with ``rngs=nnx.Rngs(seed)``
when its class or factory takes ``rngs``). The module is imported from the working directory or
PYTHONPATH. ``UserModel`` gives both kinds one functional interface over plain dict variables
``{'params': ..., 'batch_stats': ..., ...}`` (an NNX module's state as pure dicts), so the trainer,
checkpoints and the graph passes see the same pytrees for linen and NNX:

  init(key, x)                      -> variables
  apply(variables, x, train=False)  -> logits; with train=True -> (logits, updated 'batch_stats')

linen models are applied as ``apply(variables, x, train=...)``; ``call`` (config.model_call) names
another flag: ``"deterministic"``-style flags that mean "not training" are written ``"not NAME"``
(``"not deterministic"``, ``"not use_running_average"``). NNX models switch with ``.train()`` /
``.eval()``; one whose ``__call__`` takes ``rngs`` (Flax's NNX examples) is called with
``rngs=nnx.Rngs(dropout=key)`` in training and a fixed ``nnx.Rngs(0)`` in evaluation. A BatchNorm
naming an axis (``axis_name='batch'``, the trainer's axis) synchronises its
statistics under pmap and shard_map alike; outside a mapped step only evaluation mode is used.

A module may declare ``keep_whole`` (a class attribute: fnmatch patterns of unit names, the BN's
module path): the units matching it get no mask and their groups are never cut
(``traced.masked.UnitSet``). The built-in pre-activation ResNets declare ``("block*/bn1",)``, the BN-ReLU a
stage's first block shares with its shortcut, which the paper leaves unmasked.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import keyword
import os
import re
import sys
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
from flax import nnx

from soft_prune_jax.models import get_model, is_builtin

SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
STATS = "batch_stats"


class UserModelError(ValueError):
    """config.model names something that cannot be built or called as a Flax classifier."""


def is_user_model(name) -> bool:
    """True for a ``"package.module:attribute"`` spec (built-in names have no colon)."""
    return isinstance(name, str) and ":" in name


def _builtin_target(name: str) -> Callable:
    """A built-in architecture by its registry name: the same road as a user's model."""

    def target(num_classes, **kwargs):
        return get_model(name, num_classes, **kwargs)

    return target


def _fail(spec: str, cause: str) -> UserModelError:
    return UserModelError(f"config.model={spec!r}: {cause}")


def load_target(spec: str) -> Callable:
    """The class or factory ``spec`` names, imported from the working directory or PYTHONPATH."""
    if not SPEC.match(spec):
        raise _fail(spec, "expected 'package.module:attribute' (a linen/NNX module class or a factory)")
    module_name, attr = spec.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `python launch/train.py` puts launch/ first, not the working directory
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module; one line naming it
        raise _fail(
            spec, f"cannot import {module_name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise _fail(spec, f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise _fail(spec, f"{attr!r} is a {type(target).__name__}, expected a Flax module class or a factory")
    return target


def _wants_rngs(target) -> bool:
    if isinstance(target, type) and issubclass(target, nnx.Module):
        return True
    try:
        return "rngs" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _call_rngs(module, rngs) -> dict:
    """``rngs=nnx.Rngs(...)`` for an NNX module whose ``__call__`` takes ``rngs`` (Flax's MNIST example:
    ``model(x, rngs=rngs)``, its dropout drawing from ``rngs``): the trainer's streams (``{'dropout':
    key}``) in training; in evaluation dropout draws nothing, so a fixed seed."""
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return {}
    if "rngs" not in params or params["rngs"].kind is inspect.Parameter.POSITIONAL_ONLY:
        return {}
    return {"rngs": nnx.Rngs(**rngs) if rngs else nnx.Rngs(0)}


def _name(word: str) -> bool:
    return word.isidentifier() and not keyword.iskeyword(word)


def parse_call(call) -> tuple[str, bool]:
    """(keyword, inverted) of config.model_call: 'train' -> ('train', False), 'not deterministic' ->
    ('deterministic', True)."""
    words = call.split() if isinstance(call, str) else []
    if len(words) == 1 and _name(words[0]):
        return words[0], False
    if len(words) == 2 and words[0] == "not" and _name(words[1]):
        return words[1], True
    raise ValueError(
        f"config.model_call={call!r} is invalid: expected a flag name ('train') or 'not NAME' ('not deterministic')"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class UserModel:
    """A built user model with one functional interface for linen and NNX (module docstring)."""

    spec: str
    kind: str  # 'linen' | 'nnx'
    build: Callable[[Any], Any]  # key or seed -> a fresh module instance (NNX: with its own rngs)
    module: Any  # the instance built from config.seed (linen: the module; NNX: a template)
    flag: Optional[str] = "train"
    inverted: bool = False
    # unit names (fnmatch patterns) whose channel groups SCP leaves whole: the module's own
    # ``keep_whole`` (a pre-activation ResNet's shared BN-ReLU), else none
    keep_whole: tuple = ()

    def _kwargs(self, train: bool) -> dict:
        return {self.flag: (not train) if self.inverted else train} if self.flag else {}

    def init(self, key, x) -> dict:
        if self.kind == "linen":
            variables = self.module.init({"params": key, "dropout": key}, x, **self._kwargs(False))
            return dict(jax.tree_util.tree_map(lambda a: a, dict(variables)))
        module = self.build(key)
        return _pure(nnx.state(module))

    def apply(self, variables, x, *, train: bool = False, rngs=None):
        if self.kind == "linen":
            if not train:
                return self.module.apply(variables, x, **self._kwargs(False))
            logits, state = self.module.apply(variables, x, rngs=rngs or {}, mutable=[STATS], **self._kwargs(True))
            return logits, {STATS: state.get(STATS, {})}
        module = self.merge(variables)
        if train:
            module.train()
        else:
            module.eval()
        logits = module(x, **_call_rngs(module, rngs))
        if not train:
            return logits
        return logits, {STATS: _pure(nnx.state(module)).get(STATS, {})}

    def merge(self, variables):
        """An NNX module holding ``variables`` (pure dicts)."""
        graphdef, state = nnx.split(self.module)
        state = jax.tree_util.tree_map(lambda a: a, state)
        nnx.replace_by_pure_dict(state, _nnx_keys(variables, state))
        return nnx.merge(graphdef, state)


def pure_state(module) -> dict:
    """An NNX module's variables as nested dicts by collection ({'params': ..., 'batch_stats': ...}), the
    form ``UserModel.apply`` takes."""
    return _pure(nnx.state(module))


def _pure(state) -> dict:
    """An NNX state as nested dicts: {'params': {...}, 'batch_stats': {...}, ...} by Variable type."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        collection = _collection(var)
        node = out.setdefault(collection, {})
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = var.value if isinstance(var, nnx.Variable) else var
    return out


def _collection(var) -> str:
    if isinstance(var, nnx.Param):
        return "params"
    if isinstance(var, nnx.BatchStat):
        return STATS
    return type(var).__name__.lower()


def _nnx_keys(variables, state) -> dict:
    """``variables`` (by collection) as the pure dict of ``state`` (by module path)."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        if _collection(var) not in variables:  # e.g. rng counters: the module's own values stay
            continue
        node = variables[_collection(var)]
        for key in path:
            node = node[str(key)]
        cur = out
        for key in path[:-1]:
            cur = cur.setdefault(key, {})
        cur[path[-1]] = node
    return out


def build(
    spec: str, num_classes: int, kwargs: Optional[dict] = None, *, call: str = "train", seed: int = 0
) -> UserModel:
    """The ``UserModel`` of ``spec`` (see the module docstring); errors are one line naming the model."""
    target = _builtin_target(spec) if is_builtin(spec) else load_target(spec)
    kwargs = dict(kwargs or {})
    wants_rngs = _wants_rngs(target)

    def make(key_or_seed):
        extra = {"rngs": nnx.Rngs(key_or_seed)} if wants_rngs else {}
        return target(num_classes=num_classes, **kwargs, **extra)

    try:
        module = make(seed)
    except Exception as e:  # noqa: BLE001 - the user's constructor; one line naming it
        raise _fail(
            spec,
            f"calling it with num_classes={num_classes} and model_kwargs={kwargs} failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        ) from None
    if isinstance(module, nnx.Module):
        kind = "nnx"
    elif isinstance(module, nn.Module):
        kind = "linen"
    else:
        raise _fail(
            spec, f"it returned a {type(module).__name__}, not a Flax module (flax.linen.Module or flax.nnx.Module)"
        )
    flag, inverted = parse_call(call) if kind == "linen" else (None, False)
    keep_whole = tuple(getattr(module, "keep_whole", ()) or ())
    return UserModel(spec, kind, make, module, flag, inverted, keep_whole)


def check_callable(model: UserModel, input_shape) -> None:
    """Initialises and applies ``model`` abstractly on one image of ``input_shape`` (no compute)."""
    x = jax.ShapeDtypeStruct((2,) + tuple(input_shape), jax.numpy.float32)
    try:
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    except Exception as e:  # noqa: BLE001 - the user's model failed on the images; one line naming it
        raise _fail(
            model.spec,
            f"cannot be called on the dataset's images of shape {tuple(input_shape)}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        ) from None
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 2:
        raise _fail(
            model.spec,
            f"returned {jax.tree_util.tree_map(lambda a: a.shape, out)} for a batch of 2 "
            "images: expected logits of shape (batch, num_classes)",
        )
    if "params" not in variables:
        raise _fail(model.spec, "has no parameters")
