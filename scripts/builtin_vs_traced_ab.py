"""A built-in network on its own path vs its plain-Flax twin on the traced path, fresh processes taking turns.

    python scripts/builtin_vs_traced_ab.py --model=fmnist_cnn --batch_size=128 --input_shape=28,28,1
    python scripts/builtin_vs_traced_ab.py --model=resnet56 --batch_size=64 --input_shape=32,32,3 --json=out.json

Issue 22's "Keep" timings, measured before the swap. Each child process measures one setting:

* ``builtin``: the registry model with ``MaskedBNReLU`` units (today's training path) and, for
  inference, its compact class rebuilt by ``compact.surgery`` (today's export);
* ``traced``: the plain twin (tests/zoo_builtin.py) with the CPU choices (``zoo_builtin.cpu_twin``:
  ``fast_conv.Conv``, VGG's ``max_pool_2x2``),
  trained behind ``user.masked.MaskedModel`` (masks by replay) and cut by ``prune_model``, the compact
  model saved and reloaded as the ``jax.export`` artifact;
* ``traced_xla``: the same with ``nn.Conv`` and ``nn.max_pool`` (what a GPU run would use).

Both take the SCP train step (pmap over one CPU device, the trainer's step) on the same random batch,
and time the compact model at each ``--infer_batches`` on the same random BN statistics (about half of
every unit's channels dead). Printed: medians over ``--rounds`` of each child's median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("builtin", "traced", "traced_xla")

CHILD = r"""
import functools, json, os, sys, tempfile, time
from soft_prune_jax import host_memory
host_memory.retain_freed_memory()  # as launch/train.py: before JAX's backend starts
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
sys.path.insert(0, "tests")
import zoo_builtin
from configs import default
from soft_prune_jax import prune_model
from soft_prune_jax.compact import artifact, surgery
from soft_prune_jax.compact.prune_model import channel_groups
from soft_prune_jax.measure import benchmark
from soft_prune_jax.methods import get_method
from soft_prune_jax.models import get_model, user
from soft_prune_jax.training import state as S
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.steps import AXIS, train_step
from soft_prune_jax.user import masked

setting, name, batch, shape, steps, infer = sys.argv[1:7]
batch, steps = int(batch), int(steps)
input_shape = tuple(int(v) for v in shape.split(","))
infer = [int(b) for b in infer.split(",")]
config = default.get_config()
scp = get_method("scp")
mask = scp.mask_config(config)
builtin = get_model(name, 10, mask=None)
x1 = jnp.zeros((2,) + input_shape, jnp.float32)
if setting == "builtin":
    variables = S.init_variables(builtin, jax.random.key(0), input_shape)
    model, reg = builtin.clone(mask=mask, axis_name=AXIS), scp.regulariser(config)
else:
    spec = "zoo_builtin:cpu_twin" if setting == "traced" else "zoo_builtin:twin"
    um = user.build(spec, 10, {"name": name, "norm": functools.partial(nn.BatchNorm, axis_name=AXIS)})
    variables = um.init(jax.random.PRNGKey(0), x1)
    units = masked.UnitSet.analyze(um, jax.tree.map(jnp.ones_like, variables), x1)
    model = masked.MaskedModel(um, units, "soft", mask=mask)
    reg = lambda p, r=scp.regulariser(config): r(units.unit_view(p))
lr_fn = S.create_learning_rate_fn(0.1, (), 1.0, 1)
tx = S.create_optimizer(config, lr_fn, variables["params"])
state = S.create_train_state(jax.random.PRNGKey(1), variables, tx)
parallel = Parallel("pmap")
step = parallel.map(functools.partial(train_step, model=model, tx=tx, learning_rate_fn=lr_fn, regulariser=reg))
rng = np.random.RandomState(0)
split = {"image": rng.randn(1, batch, *input_shape).astype(np.float32),
         "label": rng.randint(0, 10, (1, batch)).astype(np.int32)}
replicated = parallel.replicate(state)
t = time.perf_counter()
jax.block_until_ready(step(replicated, parallel.shard_batch(split)))
compile_s = time.perf_counter() - t
for _ in range(2):
    jax.block_until_ready(step(replicated, parallel.shard_batch(split)))
times = []
for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(step(replicated, parallel.shard_batch(split)))
    times.append(time.perf_counter() - t)

# the compact model of the same random statistics (about half of each unit's channels dead)
masked_builtin = get_model(name, 10)
trained = surgery.random_variables(masked_builtin, (1,) + input_shape, 0, 0.5)
x = jnp.asarray(rng.randn(2, *input_shape), jnp.float32)
if setting == "builtin":
    compact, cvars = surgery.prune(masked_builtin, trained)
    apply = lambda v, x: compact.apply(v, x, train=False)
else:
    plain = (zoo_builtin.cpu_twin if setting == "traced" else zoo_builtin.twin)(name, 10)
    pv = zoo_builtin.builtin_variables(trained)
    shared = {"block%d/bn1" % b for b in range(200)}  # the paper's unmasked shared BN-ReLUs
    keep = {g.name: np.arange(g.size) for g in channel_groups(plain, pv, x)
            if g.prunable and {u.name for u in g.units} & shared}
    c, cv = prune_model(plain, pv, x, keep=keep)
    d = tempfile.mkdtemp()
    artifact.save(d, c, cv, jax.ShapeDtypeStruct((1,) + input_shape, jnp.float32), overwrite=True)
    compact, cvars = artifact.load(d)
    apply = lambda v, x: compact.apply(v, x, train=False)
infer_ms = {}
for b in infer:
    xb = benchmark.random_inputs(b, input_shape, 0)
    infer_ms[b] = benchmark.time_compiled(apply, (cvars, xb), runs=20)["median_ms"]
print("RESULT " + json.dumps({"step_ms": 1000 * float(np.median(times)), "compile_s": compile_s,
                               "compact_infer_ms": infer_ms}))
"""


def run_child(setting: str, args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    argv = [setting, args.model, str(args.batch_size), args.input_shape, str(args.steps), args.infer_batches]
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child {setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--input_shape", default="28,28,1")
    parser.add_argument("--infer_batches", default="1,64")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    if not settings or any(s not in SETTINGS for s in settings):
        raise SystemExit(f"--settings={args.settings!r} is invalid: expected a comma-separated subset of {SETTINGS}")
    runs: dict[str, list] = {s: [] for s in settings}
    load_before = list(os.getloadavg())
    for r in range(args.rounds):
        for s in settings:
            res = run_child(s, args)
            runs[s].append(res)
            print(f"round {r + 1}: {s}: {json.dumps(res)}", flush=True)
    summary = {}
    for s, rows in runs.items():
        summary[s] = {
            "step_ms": statistics.median(row["step_ms"] for row in rows),
            "compile_s": statistics.median(row["compile_s"] for row in rows),
            "compact_infer_ms": {
                b: statistics.median(row["compact_infer_ms"][b] for row in rows) for b in rows[0]["compact_infer_ms"]
            },
        }
    print(f"\n{args.model}, train batch {args.batch_size}, medians over {args.rounds} rounds (loaded machine):")
    for s, row in summary.items():
        print(f"  {s:11s} {json.dumps(row)}")
    if args.json:
        out = {"args": vars(args), "load_before": load_before, "load_after": list(os.getloadavg()), "runs": runs}
        with open(args.json, "w") as f:
            json.dump({**out, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
