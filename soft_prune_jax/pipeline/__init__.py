"""The experiment as phases over one workdir: train -> prune -> finetune -> evaluate -> benchmark -> report.

Each phase reads what earlier phases left in WORKDIR and writes its own outputs, so any phase can
run alone on an existing workdir (``--phases=evaluate,report``):

  train      joint training from scratch, as config.method trains   checkpoints/train/, train.json
  prune      surgery by the method's masks (cut.surgery_choice)      compact/ (export.save_compact), prune.json
  finetune   the compact model (mask=None), LR finetune_learning_rate, the same schedule shape
             over finetune_epochs (0 = skipped)                      checkpoints/finetune/, finetuned/, finetune.json
  evaluate   test accuracy (top-1; top-5 with >= 5 classes) of the trained (hard-masked) and compact
             models, and the largest |logit difference| between them before fine-tuning   evaluate.json
  benchmark  median latency of the dense architecture and the final compact model     benchmark.json
  report     everything above plus MACs, parameters, channels       report.json, report.md, widths.png

One module per phase; ``records`` (JSON files), ``workdir`` (the trained checkpoint and compact
exports), ``cut`` (which channels surgery cuts, by the method plug-in), ``budget`` (a MAC budget's
cost model for the trainer), ``user_model`` (each phase's seam for a user's own model) and
``runner`` (phases in order). The top layer: may import every other subpackage; no subpackage
imports it (only the package's ``__init__`` re-exports ``run``).
"""

from soft_prune_jax.pipeline.runner import PHASES, parse_phases, run
from soft_prune_jax.pipeline.workdir import final_compact, trained_variables

__all__ = ["PHASES", "final_compact", "parse_phases", "run", "trained_variables"]
