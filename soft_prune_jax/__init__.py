"""soft_prune_jax: Operation-Aware Soft Channel Pruning (Kang & Han, ICML 2020) in JAX/Flax.

Every model -- a built-in architecture by name or a user's ``'package.module:attribute'`` -- takes one
path: its computation is traced, SCP's masks are inserted by replaying it, the cut is ``prune_model``'s
replay on sliced arrays, MACs are read off the graph, and the compact model is a ``jax.export`` artifact.

Subpackages, lowest layer first (each imports only the ones before it; its ``__init__`` says which):
``ops`` (convolution formulations and their gradients), ``scp`` (SCP mask math, MAC-budget
arithmetic, the lambda controller, latency arithmetic), ``models`` (the built-in architectures as plain
Flax modules, and user models by name), ``graph`` (channel groups and BN-ReLU units of any Flax model,
from its jaxpr), ``compact`` (``prune_model`` and its replay, the cut's self-check, the trainable
compact model, per-layer latency tables, jax.export artifacts), ``measure`` (the MAC convention,
latency benchmarks, reports), ``traced`` (SCP's masks inserted by replay, MACs and the budget's cost
model from the graph), ``pruners`` (pruning methods as plug-ins), ``training`` (steps, parallel
drivers, loop, data, checkpoints) and ``pipeline`` (the phases of an experiment). The names below are
the public API; everything else is reachable through its subpackage.

Importing the package changes nothing in the process. Process-wide settings are the launchers' to apply
(launch/train.py, launch/benchmark.py): ``host_memory.retain_freed_memory`` (keeps freed host memory
mapped, so XLA:CPU's training steps stop page-faulting) and ``training.cpu_devices.apply``; a script of
your own calls them before its first JAX computation.
"""

from soft_prune_jax.compact.artifact import load as load_artifact
from soft_prune_jax.compact.artifact import save as save_artifact
from soft_prune_jax.compact.prune_model import channel_groups
from soft_prune_jax.models import get_model, model_names
from soft_prune_jax.pipeline import PHASES, parse_phases, run
from soft_prune_jax.pruners import Method, get_method, method_names
from soft_prune_jax.pruners import register as register_method
from soft_prune_jax.scp.masks import MaskConfig
from soft_prune_jax.traced.prune_to_latency import prune_model

__version__ = "0.1.0"

# What the README teaches: pruning a model, its artifacts, the built-in models, the pruning methods as
# plug-ins and the pipeline's phases. The trainer's insides (state, steps, loop, parallel drivers) are
# reachable through ``soft_prune_jax.training``.
__all__ = [
    "PHASES",
    "MaskConfig",
    "Method",
    "channel_groups",
    "get_method",
    "get_model",
    "load_artifact",
    "method_names",
    "model_names",
    "parse_phases",
    "prune_model",
    "register_method",
    "run",
    "save_artifact",
]
