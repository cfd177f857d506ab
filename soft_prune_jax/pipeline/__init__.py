"""The experiment as phases over one workdir: train -> prune -> finetune -> evaluate -> benchmark -> report.

Each phase reads what earlier phases left in WORKDIR and writes its own outputs, so any phase can
run alone on an existing workdir (``--phases=evaluate,report``):

  train      joint training from scratch, as config.method trains   checkpoints/train/, train.json
  prune      the cut by the method's masks (prune_model's replay)    compact/ (a jax.export artifact), prune.json
  finetune   the compact model itself, LR finetune_learning_rate, the same schedule shape
             over finetune_epochs (0 = skipped)                      checkpoints/finetune/, finetuned/, finetune.json
  evaluate   test accuracy (top-1; top-5 with >= 5 classes) of the trained (hard-masked) and compact
             models, and the largest |logit difference| between them before fine-tuning   evaluate.json
  benchmark  median latency of the dense architecture and the final compact model     benchmark.json
  report     everything above plus MACs, parameters, channels       report.json, report.md, widths.png

Every model, built-in or a user's, takes one road: ``traced`` (each phase's calls into the traced
path: masks inserted by replay, the graph cut, the artifact). One module per phase; ``records``
(JSON files), ``workdir`` (the trained checkpoint and compact artifacts), ``budget`` (a MAC or
latency budget for the trainer), ``latency`` (the latency model and widths chosen by it) and
``runner`` (phases in order). The top layer: may import every other subpackage; no subpackage
imports it (only the package's ``__init__`` re-exports ``run``).
"""

from soft_prune_jax.pipeline.runner import PHASES, parse_phases, run
from soft_prune_jax.pipeline.workdir import final_compact, trained_variables

__all__ = ["PHASES", "final_compact", "parse_phases", "run", "trained_variables"]
