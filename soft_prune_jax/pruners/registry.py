"""Methods by name: ``register`` adds one, ``get_method(config.method)`` finds it."""

from __future__ import annotations

from soft_prune_jax.pruners.base import Method

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` under ``method.name`` (a second method of the same name is an error)."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"method {method.name!r} is already registered: expected a new name")
    _REGISTRY[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """Registered names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"method={name!r} is invalid: expected one of {', '.join(method_names())}")
    return _REGISTRY[name]
