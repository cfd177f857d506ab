"""Timing the dense and the compact model in a fresh process, where this process's state would bias it.

The launchers set glibc's malloc to one arena that keeps freed memory (``host_memory``): training
steps stop page-faulting, but once a process has trained under it, inference in it runs slower, and
unevenly: on the demo network after training, the dense model ~13% and its compact model ~35% slower
than in a fresh process (docs/RESULTS.md), enough to turn a 1.8x speed-up into 1.45x. So where that
policy is applied (``needed``), the benchmark phase and the latency landing time in a child process
(``python -m soft_prune_jax.pipeline.fresh_timing``) that only rebuilds the dense model from the
workdir (its config and trained variables), loads the compact artifact and times the two taking
turns (``measure.timing.time_interleaved``), as a process that serves the model would run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Sequence

from soft_prune_jax import host_memory

RESULT = "RESULT "
TIMEOUT_S = 900


ENV = "SOFT_PRUNE_JAX_FRESH_TIMING"  # 'auto' (default: where the malloc policy is applied), 'always', 'never'
CHOICES = ("auto", "always", "never")


def needed(environ=None) -> bool:
    """Whether to time in a fresh process: ``$SOFT_PRUNE_JAX_FRESH_TIMING``, by default ('auto') where
    this process runs under the malloc policy that slows inference after training."""
    choice = (environ if environ is not None else os.environ).get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r} is invalid: expected one of {', '.join(CHOICES)}")
    return choice == "always" or (choice == "auto" and bool(host_memory.state().get("applied")))


def time_pair(
    workdir: str,
    compact_dir: str,
    input_shape: Sequence[int],
    num_classes: int,
    batch_sizes: Sequence[int],
    runs: int,
    warmup: int = 3,
) -> dict:
    """{batch size: {'dense': timing, 'compact': timing}} in a fresh process: the workdir's trained
    network as written (``num_classes`` outputs: the child never opens the dataset) against the
    artifact in ``compact_dir``, on random inputs. The child sees this process's ``sys.path``, so a
    user's model imported from the working directory or a path added at run time imports there too."""
    request = {
        "workdir": workdir,
        "compact_dir": compact_dir,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "batch_sizes": [int(b) for b in batch_sizes],
        "runs": int(runs),
        "warmup": int(warmup),
    }
    env = {k: v for k, v in os.environ.items() if k != host_memory.ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, "-m", "soft_prune_jax.pipeline.fresh_timing", json.dumps(request)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"timing {compact_dir} against {workdir}'s dense model in a fresh process failed: {tail}")
    return {int(b): timed for b, timed in json.loads(lines[-1][len(RESULT) :]).items()}


def _child(request: dict) -> dict:
    from ml_collections import config_dict

    from soft_prune_jax.compact import artifact
    from soft_prune_jax.measure import timing
    from soft_prune_jax.pipeline import model_path
    from soft_prune_jax.pipeline.workdir import trained_variables
    from soft_prune_jax.training.checkpoint import load_workdir_config

    workdir, input_shape = request["workdir"], tuple(request["input_shape"])
    config = config_dict.ConfigDict(load_workdir_config(workdir))
    variables = trained_variables(config, workdir)
    dense = model_path.dense_model(config, input_shape, num_classes=request["num_classes"])
    compact, compact_vars = artifact.load(request["compact_dir"])
    out = {}
    for batch in request["batch_sizes"]:
        x = timing.random_inputs(batch, input_shape, 0)
        calls = {
            "dense": (lambda v, x: dense.apply(v, x, train=False), (variables, x)),
            "compact": (compact.apply, (compact_vars, x)),
        }
        out[batch] = timing.time_interleaved(calls, runs=request["runs"], warmup=request["warmup"])
    return out


if __name__ == "__main__":
    print(RESULT + json.dumps(_child(json.loads(sys.argv[1]))), flush=True)
