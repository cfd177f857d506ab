"""The exported artifact's conv formulations: chosen for any batch size (now) vs for the batch-1 shapes
the per-example export traces (before), against the replay itself, on the demo network cut to --widths.

    python scripts/artifact_formulation_ab.py --widths=28,32,49,64,96

Prints the median ms of each (interleaved, 30 runs) at batch 64 and 1. Weights are random; a cut keeps
the first channels of each group.
"""

import argparse
import contextlib
import json
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax import load_artifact, prune_model, save_artifact
from soft_prune_jax.compact import artifact
from soft_prune_jax.measure import timing
from soft_prune_jax.models import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="28,32,49,64,96", help="kept channels of masked_bn0..4")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 28, 28, 1)), jnp.float32)
    dense = get_model("fmnist_cnn", 10)
    variables = jax.jit(dense.init)(jax.random.key(0), x)
    keep = {f"masked_bn{i}": np.arange(w) for i, w in enumerate(widths)}
    compact, compact_vars = prune_model(dense, variables, x[:2], keep=keep, train=False)
    folder = tempfile.mkdtemp()
    save_artifact(folder + "/any_batch", compact, compact_vars, x[:1])
    artifact._any_batch_formulation = lambda compact: contextlib.nullcontext()  # the export as it was before
    save_artifact(folder + "/batch_one", compact, compact_vars, x[:1])
    models = {name: load_artifact(f"{folder}/{name}") for name in ("any_batch", "batch_one")}
    out = {"widths": widths, "device": timing.device_description()}
    for batch in (64, 1):
        xb = x[:batch]
        calls = {"dense": (lambda v, x: dense.apply(v, x, train=False), (variables, xb))}
        calls["replay"] = (lambda v, x: compact.apply(v, x, train=False), (compact_vars, xb))
        calls.update({f"artifact_{name}": (m.apply, (v, xb)) for name, (m, v) in models.items()})
        out[batch] = {k: round(t["median_ms"], 2) for k, t in timing.time_interleaved(calls, runs=30).items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
