"""The compact model's latency now (prune_model's cut, saved and reloaded as the jax.export artifact)
against a built-in compact class of an earlier commit, fresh processes taking turns.

    git worktree add /tmp/base 4c0f2fa   # the last commit with the rebuilt compact classes
    python scripts/compact_latency_vs_commit.py --base=/tmp/base --model=resnet56 --input_shape=32,32,3

Issue 22's "Keep": the compact model's inference latency no slower than the rebuilt class it replaces.
Each round runs two children on the same network: ``class`` (with PYTHONPATH=--base: the built-in
model, ``compact.surgery.random_variables`` -- about half of every unit's channels dead -- and
``surgery.prune``'s rebuilt class) writes its variables and outputs; ``artifact`` (this checkout) loads
those variables into the plain model, cuts it with ``prune_model``, checks the outputs equal the
class's, saves and reloads the artifact and times it. Both time a jitted apply with
``measure.timing.time_compiled`` at every ``--batches``. Printed: medians over rounds of each
child's median, and their ratio (artifact / class: below 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASS_CHILD = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import traverse_util
from soft_prune_jax.compact import surgery
from soft_prune_jax.measure import timing as benchmark
from soft_prune_jax.models import get_model
name, shape, classes = sys.argv[1], tuple(json.loads(sys.argv[2])), int(sys.argv[3])
batches, runs, out = json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
model = get_model(name, classes)
variables = surgery.random_variables(model, (1,) + shape, 0, 0.5)
compact, compact_vars = surgery.prune(model, variables)
x = benchmark.random_inputs(4, shape, 1)
flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables)))
plain = {"/".join(k for k in key if k != "bn"): v for key, v in flat.items()}  # unmasked BNs nest one level deeper
np.savez(out + ".npz", **plain)
np.save(out + ".logits.npy", np.asarray(compact.apply(compact_vars, x, train=False)))
ms = {}
for b in batches:
    xb = benchmark.random_inputs(b, shape, 0)
    apply = lambda v, x: compact.apply(v, x, train=False)  # noqa: E731
    ms[b] = benchmark.time_compiled(apply, (compact_vars, xb), runs=runs)["median_ms"]
print(json.dumps(ms))
"""

ARTIFACT_CHILD = r"""
import json, sys, tempfile
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
from flax import traverse_util
from soft_prune_jax import prune_model
from soft_prune_jax.compact import artifact
from soft_prune_jax.measure import timing as benchmark
from soft_prune_jax.models import get_model
name, shape, classes = sys.argv[1], tuple(json.loads(sys.argv[2])), int(sys.argv[3])
batches, runs, out = json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
model = get_model(name, classes, norm=nn.BatchNorm)
with np.load(out + ".npz") as f:
    variables = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(f[k]) for k in f.files})
x = benchmark.random_inputs(4, shape, 1)
compact, compact_vars = prune_model(model, variables, x, train=False)
directory = tempfile.mkdtemp() + "/compact"
artifact.save(directory, compact, compact_vars, jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
loaded, loaded_vars = artifact.load(directory)
diff = float(np.max(np.abs(np.asarray(loaded.apply(loaded_vars, x)) - np.load(out + ".logits.npy"))))
assert diff < 1e-3, f"the artifact's logits differ from the class's by {diff}"
ms = {}
for b in batches:
    xb = benchmark.random_inputs(b, shape, 0)
    ms[b] = benchmark.time_compiled(lambda v, x: loaded.apply(v, x), (loaded_vars, xb), runs=runs)["median_ms"]
print(json.dumps(ms))
"""


def child(code: str, args, out: str, pythonpath: str) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    argv = [args.model, json.dumps(args.shape), str(args.num_classes), json.dumps(args.batch_list), str(args.runs), out]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=pythonpath)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a worktree of the commit with the rebuilt compact classes")
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--input_shape", default="28,28,1")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.base, "soft_prune_jax", "compact", "surgery.py")):
        parser.error(f"--base={args.base!r} holds no soft_prune_jax/compact/surgery.py: expected a worktree of 4c0f2fa")
    args.shape = [int(s) for s in args.input_shape.split(",")]
    args.batch_list = [int(b) for b in args.batches.split(",")]
    runs = {"class": [], "artifact": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "case")
        for r in range(args.rounds):
            runs["class"].append(child(CLASS_CHILD, args, out, args.base))
            runs["artifact"].append(child(ARTIFACT_CHILD, args, out, ROOT))
            print(f"round {r + 1}: class {runs['class'][-1]}  artifact {runs['artifact'][-1]}", flush=True)
    result = {"model": args.model, "input_shape": args.shape, "rounds": args.rounds, "runs": args.runs}
    for b in args.batch_list:
        c = statistics.median(x[b] for x in runs["class"])
        a = statistics.median(x[b] for x in runs["artifact"])
        result[f"batch_{b}"] = {"class_ms": c, "artifact_ms": a, "artifact_over_class": a / c}
        print(f"batch {b}: class {c:.3f} ms, artifact {a:.3f} ms, artifact/class {a / c:.3f}")
    result["load_average"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
