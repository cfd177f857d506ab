"""Where the jitted training step's time goes: XLA:CPU's own per-op trace, by layer and kind.

    python scripts/profile_train_step.py --model=fmnist_cnn --batch_size=128 --input_shape=28,28,1
    python scripts/profile_train_step.py --model=resnet56 --batch_size=64 [--step=plain] [--json=PATH]

Per-layer timings of convs in isolation (scripts/profile_conv_grads.py) do not add up to the
compiled step: XLA fuses producers and consumers into each op, runs the whole inference forward as
one library fusion, and adds copies of its own. This script compiles the step that trains
(``training.steps.train_step`` with the model the train phase builds, ``pipeline.model_path``: SCP's
masks by the traced replay, or the plain one; BN unsynchronised, one device unmapped), runs it
under ``jax.profiler.trace`` and sums the duration of every executed HLO op (thunk) over
``--steps`` steps. Each op is attributed from its HLO metadata to a
layer (the module path in its ``op_name``), a pass (forward, or backward for ops under
``transpose(...)``) and a kind (conv, dot, reduce, elementwise/copy, loop); ops XLA created itself
(layout copies, concatenations of patches) carry no metadata and are listed as 'unattributed'.
The jitted inference forward is profiled the same way for comparison. Times are per step, summed
over threads; the wall time per step is printed next to them.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import re
import sys
import tempfile
import time

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the ``configs`` package

from configs import default  # noqa: E402
from soft_prune_jax import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # as launch/train.py does, before JAX's backend starts
from soft_prune_jax.measure import timing as B  # noqa: E402
from soft_prune_jax.pipeline import model_path as traced  # noqa: E402
from soft_prune_jax.training import state as S  # noqa: E402
from soft_prune_jax.training.steps import train_step  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def build(model_name: str, batch_size: int, input_shape, which: str):
    """(fn, args) of the jitted inference forward and of ``which`` train step ('scp' | 'plain'): the
    model and regulariser the pipeline's train phase builds (``traced.training_phase``: SCP masks by the
    traced replay), its BN unsynchronised so the step runs unmapped (``axis_name=None``)."""
    config = default.get_config()
    config.model, config.num_classes = model_name, 10
    config.model_kwargs = {"norm": nn.BatchNorm}
    config.method = "scp" if which == "scp" else "dense"
    phase = traced.training_phase(config, input_shape)
    dense = traced.dense_model(config, input_shape)
    x = B.random_inputs(batch_size, input_shape, 0)
    variables = phase.model.init({"params": jax.random.PRNGKey(0)}, x[:2])
    labels = jax.random.randint(jax.random.key(1), (batch_size,), 0, 10)
    lr_fn = S.create_learning_rate_fn(float(config.learning_rate), (), 1.0, 1)
    tx = S.create_optimizer(config, lr_fn, variables["params"])
    state = S.create_train_state(jax.random.PRNGKey(2), variables, tx)
    step = functools.partial(
        train_step, model=phase.model, tx=tx, learning_rate_fn=lr_fn, regulariser=phase.regulariser, axis_name=None
    )
    return (lambda v, x: dense.apply(v, x, train=False), (variables, x)), (
        step,
        (state, {"image": x, "label": labels}),
    )


def _hlo_index(hlo_text: str):
    """{instruction name: its text} and {computation name: its body lines} of compiled HLO text."""
    instructions, computations, current = {}, {}, None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and _COMPUTATION.match(line.strip()):
            current = _COMPUTATION.match(line.strip()).group(1)
            computations[current] = []
            continue
        if current is not None:
            computations[current].append(line)
        match = _INSTRUCTION.match(line)
        if match and match.group(1) not in instructions:
            instructions[match.group(1)] = match.group(2)
    return instructions, computations


def _classify(name: str, instructions, computations) -> tuple[str, str, str]:
    """(layer, pass, kind) of one executed op."""
    text = instructions.get(name, "")
    calls = _CALLS.search(text)
    body = "\n".join(computations.get(calls.group(1), [])) if calls else ""
    if name.startswith("while") or " while(" in text:
        kind = "loop"
    elif "convolution(" in text or "convolution(" in body:
        kind = "conv"
    elif " dot(" in text or " dot(" in body:
        kind = "dot"
    elif " reduce(" in text or " reduce(" in body:
        kind = "reduce"
    else:
        kind = "elementwise/copy"
    # The op that gives the group its kind names the layer (a fusion also holds its producers' ops).
    marker = {"conv": "convolution(", "dot": " dot(", "reduce": " reduce("}.get(kind)
    lines = [text] + body.splitlines()
    key_lines = [line for line in lines if marker and marker in line] or lines
    op_names = [n for line in key_lines for n in _OP_NAME.findall(line)]
    if not op_names:
        return "unattributed", "-", kind
    op_name = op_names[-1]
    phase = "backward" if "transpose(" in op_name else "forward"
    skip = re.compile(r"^(transpose|jvp|vmap|jit|while|body|closed_call)\b")
    parts = [p for p in op_name.split("/")[1:] if not skip.match(p)]
    layer = parts[0] if len(parts) > 1 else "(model)"
    return layer, phase, kind


def profile(fn, args, steps: int) -> dict:
    """Per-op thread time (ms per step) of ``fn(*args)`` jitted, with the wall time per step."""
    compiled = jax.jit(fn).lower(*args).compile()
    instructions, computations = _hlo_index(compiled.as_text())
    for _ in range(3):
        jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            start = time.perf_counter()
            for _ in range(steps):
                jax.block_until_ready(compiled(*args))
            wall_ms = (time.perf_counter() - start) / steps * 1e3
        (path,) = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    per_op = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python3":  # Python's own frames; ops run on XLA's and PjRt's threads
                continue
            for event in line.events:
                if event.name in instructions:  # an HLO op (thunk); executor and thread-pool events are not
                    per_op[event.name] += event.duration_ns / 1e6 / steps
    groups = collections.Counter()
    for name, ms in per_op.items():
        groups[_classify(name, instructions, computations)] += ms
    return {
        "wall_ms": wall_ms,
        "ops_ms": sum(per_op.values()),
        "groups": [{"layer": k[0], "pass": k[1], "kind": k[2], "ms": v} for k, v in groups.most_common()],
        "top_ops": [{"op": k, "ms": v, "hlo": instructions.get(k, "")[:160]} for k, v in per_op.most_common(15)],
    }


def _print(title: str, result: dict) -> None:
    print(f"\n{title}: wall {result['wall_ms']:.1f} ms/step, ops {result['ops_ms']:.1f} ms/step (thread time)")
    by_kind = collections.Counter()
    for g in result["groups"]:
        by_kind[(g["pass"], g["kind"])] += g["ms"]
    print("  by pass and kind:")
    for (phase, kind), ms in by_kind.most_common():
        print(f"    {phase:<9} {kind:<17} {ms:8.2f} ms  {100 * ms / result['ops_ms']:5.1f}%")
    print("  by layer (largest 25 groups):")
    for g in result["groups"][:25]:
        print(f"    {g['layer']:<28} {g['pass']:<9} {g['kind']:<17} {g['ms']:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--input_shape", default="28,28,1")
    parser.add_argument("--step", choices=("scp", "plain"), default="scp")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    input_shape = tuple(int(v) for v in args.input_shape.split(","))
    forward, step = build(args.model, args.batch_size, input_shape, args.step)
    out = {
        "device": B.device_description(),
        "jax": jax.__version__,
        "host_malloc": host_memory.state(),
        "args": vars(args),
        "forward": profile(*forward, args.steps),
        "train_step": profile(*step, args.steps),
        "load_average": list(os.getloadavg()),
    }
    print(f"{out['device']}, jax {jax.__version__}, load {os.getloadavg()[0]:.1f}")
    _print("inference forward (jitted)", out["forward"])
    _print(f"{args.step} train step (jitted)", out["train_step"])
    print(f"\nstep / forward (wall): {out['train_step']['wall_ms'] / out['forward']['wall_ms']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
