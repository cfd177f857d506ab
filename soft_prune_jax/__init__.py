"""soft_prune_jax: Operation-Aware Soft Channel Pruning (Kang & Han, ICML 2020) in JAX/Flax.

Subpackages, lowest layer first (each imports only the ones before it; its ``__init__`` says which):
``ops`` (convolution kernels), ``method`` (SCP mask math and the masked BN-ReLU unit), ``models``
(the registry architectures), ``graph`` (see its own docstring), ``compact`` (structure, surgery,
folding, export, input checks), ``measure`` (MACs, latency, reports), ``methods`` (pruning methods
as plug-ins), ``training`` (steps, parallel drivers, loop, data, checkpoints) and ``pipeline`` (the
phases of an experiment). The names below are the public API; everything else is reachable
through its subpackage.
"""

from soft_prune_jax.compact.export import load_compact, save_compact
from soft_prune_jax.compact.prune_model import prune_model
from soft_prune_jax.method.masks import MaskConfig
from soft_prune_jax.methods import Method, get_method, method_names
from soft_prune_jax.methods import register as register_method
from soft_prune_jax.models import get_model, model_names
from soft_prune_jax.pipeline import PHASES, parse_phases, run
from soft_prune_jax.training.experiment import create_model, training_phase
from soft_prune_jax.training.loop import FitResult, Phase, fit
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.state import TrainState
from soft_prune_jax.training.steps import eval_step, train_step

__version__ = "0.1.0"

__all__ = [
    "PHASES",
    "FitResult",
    "MaskConfig",
    "Method",
    "Parallel",
    "Phase",
    "TrainState",
    "create_model",
    "eval_step",
    "fit",
    "get_method",
    "get_model",
    "load_compact",
    "method_names",
    "model_names",
    "parse_phases",
    "register_method",
    "run",
    "save_compact",
    "train_step",
    "training_phase",
]
