"""Keep freed host memory in the process, so XLA:CPU does not page-fault its buffers in on every step.

XLA:CPU allocates one temporary buffer per execution (for a training step, every activation the
backward pass reads) with ``malloc`` from its worker threads and frees it when the step ends. glibc
serves an allocation that large from a fresh ``mmap`` -- a worker thread's arena cannot hold it, and
that fallback ignores ``M_MMAP_MAX`` -- and unmaps it on ``free``. So every step touches a new mapping
page by page: the kernel zeroes and maps each 4 KiB page on its first write, and the memory-bound
BN / ReLU / mask passes that write a new activation pay for those faults.

``retain_freed_memory`` sets three ``mallopt`` parameters: one arena for every thread (the main arena
grows with ``brk`` and never falls back to ``mmap``), no ``mmap`` for large blocks and no trimming of
the heap's top. A freed buffer is then reused by the next step, already mapped. The price is that the
process keeps its peak heap (plus some fragmentation) until it exits, which a training or benchmark
process can afford: it reuses the same buffers step after step.

It only helps if it runs before the XLA:CPU client starts its threads (they pick an arena on their
first allocation), so the launchers call it first thing (launch/train.py, launch/benchmark.py; a script
of your own calls it before its first JAX computation); importing ``soft_prune_jax`` does not. The environment variable
``SOFT_PRUNE_JAX_HOST_MALLOC`` chooses: ``auto`` (default: on when JAX computes on the CPU, i.e. no
accelerator plugin is installed or ``JAX_PLATFORMS`` starts with ``cpu``), ``retain`` (always) or
``system`` (leave malloc alone). ``state()`` says what was done, for reports that give timings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import pkgutil
import sys
from typing import Optional

ENV = "SOFT_PRUNE_JAX_HOST_MALLOC"
POLICIES = ("auto", "retain", "system")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

# Modules through which JAX finds a non-CPU default backend: PJRT plugins (``jax_plugins.*`` or top-level
# ``jax_cuda12_plugin``-style packages) and libtpu.
_ACCELERATOR_MODULE = ("jax_cuda", "jax_rocm", "libtpu", "xla_cuda", "xla_rocm")

_state: Optional[dict] = None


def policy(environ=None) -> str:
    """The policy named by ``SOFT_PRUNE_JAX_HOST_MALLOC`` (default 'auto'); a clear error otherwise."""
    value = (environ if environ is not None else os.environ).get(ENV, "auto").strip().lower() or "auto"
    if value not in POLICIES:
        raise ValueError(f"{ENV}={value!r} is invalid: expected one of {', '.join(POLICIES)}")
    return value


def installed_accelerator_modules() -> list[str]:
    """Top-level and ``jax_plugins.*`` modules that would give JAX a GPU or TPU backend (no import)."""
    names = [m.name for m in pkgutil.iter_modules()]
    plugins = importlib.util.find_spec("jax_plugins")
    if plugins is not None and plugins.submodule_search_locations:
        names += [f"jax_plugins.{m.name}" for m in pkgutil.iter_modules(plugins.submodule_search_locations)]
    return [n for n in names if n.rsplit(".", 1)[-1].lower().startswith(_ACCELERATOR_MODULE)]


def computes_on_cpu(environ=None, accelerator_modules=None) -> bool:
    """Whether JAX's default backend will be the CPU: ``JAX_PLATFORMS`` says so, or nothing else is installed."""
    environ = environ if environ is not None else os.environ
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if accelerator_modules is None:
        accelerator_modules = installed_accelerator_modules()
    return not accelerator_modules


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # glibc only: musl and others have no such mallopt parameters to set.
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def retain_freed_memory(environ=None) -> dict:
    """Applies the policy once per process (later calls return the first result): see the module docstring.

    Returns ``state()``: {'policy', 'applied', 'reason'}.
    """
    global _state
    if _state is not None:
        return dict(_state)
    chosen = policy(environ)
    if chosen == "system":
        _state = {"policy": chosen, "applied": False, "reason": f"{ENV}=system"}
    elif chosen == "auto" and not computes_on_cpu(environ):
        _state = {"policy": chosen, "applied": False, "reason": "JAX computes on an accelerator"}
    else:
        libc = _glibc()
        if libc is None:
            _state = {"policy": chosen, "applied": False, "reason": "not glibc"}
        else:
            ok = all(
                libc.mallopt(param, value) == 1
                for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
            )
            reason = "one arena, no mmap, no trim" if ok else "mallopt refused a parameter"
            _state = {"policy": chosen, "applied": ok, "reason": reason}
    return dict(_state)


def state() -> dict:
    """What ``retain_freed_memory`` did in this process ('not called' until a launcher or script calls it)."""
    return dict(_state) if _state is not None else {"policy": policy(), "applied": False, "reason": "not called"}
