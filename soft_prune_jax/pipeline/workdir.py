"""The models a pipeline run leaves in its workdir: the trained checkpoint and the compact artifacts."""

from __future__ import annotations

import os

from soft_prune_jax.compact import artifact
from soft_prune_jax.pipeline.records import read_json
from soft_prune_jax.training import checkpoint as ckpt_lib

COMPACT_DIR, FINETUNED_DIR = "compact", "finetuned"


def trained_variables(config, workdir: str) -> dict:
    """params and batch_stats of the finished train phase (its newest checkpoint)."""
    checkpointer = ckpt_lib.TrainCheckpointer(
        ckpt_lib.checkpoint_dir(workdir, "train"), max_to_keep=config.keep_checkpoints
    )
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"no train checkpoint in {checkpointer.directory}: run --phases=train first")
        expected = read_json(workdir, "train.json", needed_by="prune/evaluate")["steps"]
        if step != expected:
            raise ValueError(
                f"the train checkpoint is at step {step}, expected the finished run's {expected}: "
                "rerun --phases=train to complete it"
            )
        state = checkpointer.restore_raw(step)
    finally:
        checkpointer.close()
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def has_finetuned(workdir: str) -> bool:
    return os.path.isdir(os.path.join(workdir, FINETUNED_DIR))


def final_name(workdir: str) -> str:
    """The final compact model's folder: the fine-tuned one if there is one, else the pruned one."""
    return FINETUNED_DIR if has_finetuned(workdir) else COMPACT_DIR


def final_compact(workdir: str):
    """(model, variables, which): the fine-tuned compact model if there is one, else the pruned one."""
    name = final_name(workdir)
    model, variables = load_model_dir(os.path.join(workdir, name))
    return model, variables, name


def load_model_dir(directory: str):
    """(model, variables) of a compact model's ``jax.export`` artifact (a folder of the format before,
    a rebuilt class, is refused in one line naming it)."""
    return artifact.load(directory)
