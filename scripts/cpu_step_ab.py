"""The SCP train step on the CPU under each host setting, child processes taking turns.

    python scripts/cpu_step_ab.py --model=fmnist_cnn --batch_size=128 --input_shape=28,28,1
    python scripts/cpu_step_ab.py --model=resnet56 --batch_size=64 --input_shape=32,32,3 --json=out.json

The malloc policy (soft_prune_jax/host_memory.py) and the number of CPU devices
(soft_prune_jax/training/cpu_devices.py) are fixed when a process starts, so each setting runs in its own
fresh interpreter; the settings take turns for ``--rounds`` rounds and each child reports the median of
``--steps`` timed steps, its minor page faults and its kernel (system) time per step. Printed: the median
over rounds per setting, and the inference forward of the same batch measured in every child. The step
is the pipeline's own (``pipeline.model_path.training_phase``: SCP masks by the traced replay).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {  # name -> (SOFT_PRUNE_JAX_HOST_MALLOC, CPU devices)
    "system malloc, 1 device": ("system", 1),
    "retained malloc, 1 device": ("auto", 1),
    "retained malloc, 2 devices": ("auto", 2),
}

CHILD = r"""
import functools, json, resource, sys, time
from soft_prune_jax import host_memory
host_memory.retain_freed_memory()  # as launch/train.py: before JAX's backend starts
import jax
model_name, shape = sys.argv[1], sys.argv[3]
batch, devices, steps = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
jax.config.update("jax_num_cpu_devices", devices)
import numpy as np
from configs import default
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.training import state as S
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.steps import train_step

input_shape = tuple(int(v) for v in shape.split(","))
config = default.get_config()
config.model, config.num_classes = model_name, 10
phase = model_path.training_phase(config, input_shape)  # the SCP model and regulariser the train phase builds
dense = model_path.dense_model(config, input_shape)
variables = phase.model.init({"params": jax.random.PRNGKey(0)}, np.zeros((2,) + input_shape, np.float32))
lr_fn = S.create_learning_rate_fn(0.1, (), 1.0, 1)
tx = S.create_optimizer(config, lr_fn, variables["params"])
state = S.create_train_state(jax.random.PRNGKey(1), variables, tx)
parallel = Parallel("pmap")
step = parallel.map(functools.partial(
    train_step, model=phase.model, tx=tx, learning_rate_fn=lr_fn, regulariser=phase.regulariser))
rng = np.random.RandomState(0)
x = rng.randn(batch, *input_shape).astype(np.float32)
y = rng.randint(0, 10, (batch,)).astype(np.int32)
split = {"image": x.reshape((devices, -1) + input_shape), "label": y.reshape((devices, -1))}
replicated = parallel.replicate(state)
forward = jax.jit(lambda v, x: dense.apply(v, x, train=False))
fv = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
for _ in range(3):
    jax.block_until_ready(step(replicated, parallel.shard_batch(split)))
    jax.block_until_ready(forward(fv, x))
before = resource.getrusage(resource.RUSAGE_SELF)
times, fwd = [], []
for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(step(replicated, parallel.shard_batch(split)))
    times.append(time.perf_counter() - t)
after = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(steps):
    t = time.perf_counter(); jax.block_until_ready(forward(fv, x)); fwd.append(time.perf_counter() - t)
print("RESULT " + json.dumps({
    "step_ms": 1000 * float(np.median(times)), "forward_ms": 1000 * float(np.median(fwd)),
    "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
    "system_ms_per_step": 1000 * (after.ru_stime - before.ru_stime) / steps,
    "user_ms_per_step": 1000 * (after.ru_utime - before.ru_utime) / steps,
    "host_malloc": host_memory.state(), "devices": jax.local_device_count(),
}))
"""


def run_child(model: str, batch: int, shape: str, malloc: str, devices: int, steps: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", SOFT_PRUNE_JAX_HOST_MALLOC=malloc)
    env.pop("XLA_FLAGS", None)
    args = [sys.executable, "-c", CHILD, model, str(batch), shape, str(devices), str(steps)]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child failed ({malloc}, {devices} devices):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--input_shape", default="28,28,1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from soft_prune_jax.measure.timing import device_description

    runs: dict[str, list] = {name: [] for name in SETTINGS}
    load_before = list(os.getloadavg())
    for r in range(args.rounds):
        for name, (malloc, devices) in SETTINGS.items():
            res = run_child(args.model, args.batch_size, args.input_shape, malloc, devices, args.steps)
            runs[name].append(res)
            print(
                f"round {r + 1}: {name}: step {res['step_ms']:.1f} ms, forward {res['forward_ms']:.1f} ms", flush=True
            )
    summary = {}
    for name, rows in runs.items():
        step = statistics.median(row["step_ms"] for row in rows)
        forward = statistics.median(row["forward_ms"] for row in rows)
        summary[name] = {
            "step_ms": step,
            "forward_ms": forward,
            "step_over_forward": step / forward,
            "minor_faults_per_step": statistics.median(row["minor_faults_per_step"] for row in rows),
            "system_ms_per_step": statistics.median(row["system_ms_per_step"] for row in rows),
        }
    base = summary["system malloc, 1 device"]["step_ms"]
    print(f"\n{args.model}, batch {args.batch_size}, SCP train step, medians over {args.rounds} rounds:")
    for name, s in summary.items():
        print(
            f"  {name:28s} step {s['step_ms']:7.1f} ms ({base / s['step_ms']:.2f}x faster; "
            f"{s['step_over_forward']:.2f}x the forward {s['forward_ms']:.1f} ms)  "
            f"page faults/step {s['minor_faults_per_step']:8.0f}  kernel ms/step {s['system_ms_per_step']:6.1f}"
        )
    if args.json:
        out = {
            "device": device_description(),
            "args": vars(args),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
            "summary": summary,
            "runs": runs,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
