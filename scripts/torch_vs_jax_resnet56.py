"""PyTorch (CPU, channels_last, eval) against jitted Flax on the same ResNet-56 shapes, batch 64.

Not a test and not a dependency: needs ``pip install torch==2.13.0`` (CPU wheel). Times the dense
pre-activation ResNet-56 and the same net with every block's inner width halved (1.99x fewer MACs;
in JAX the ``prune_model`` cut of the dense net, as the pipeline's compact model), in one process
with the same protocol (warm-up, then N rounds in which every model runs once, so load drift hits
all of them alike; median and min), and prints the load average next to the numbers because the
machine may be shared.

    OMP_WAIT_POLICY=PASSIVE python scripts/torch_vs_jax_resnet56.py --runs=30 --batch_size=64

(OMP_WAIT_POLICY=PASSIVE keeps torch's idle OpenMP threads from spinning against the other framework
and against other users of a shared machine; without it torch measured 10x slower here under load.)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import numpy as np

from soft_prune_jax import channel_groups, get_model, prune_model
from soft_prune_jax.measure import timing as B
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.traced import macs as M


def torch_resnet56(inner_widths, stage_widths=(16, 32, 64), stage_sizes=(9, 9, 9)):
    """The same pre-activation ResNet-56 as soft_prune_jax.models.PreActResNet, with ``inner_widths[b][0]``
    the width of block b's conv1 (its masked_bn2 channels)."""
    import torch.nn as tnn

    class Block(tnn.Module):
        def __init__(self, cin, inner, cout, stride, first):
            super().__init__()
            self.first = first
            self.bn1 = tnn.BatchNorm2d(cin)
            self.proj = tnn.Conv2d(cin, cout, 1, stride, bias=False) if first else None
            self.conv1 = tnn.Conv2d(cin, inner, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(inner)
            self.conv2 = tnn.Conv2d(inner, cout, 3, 1, 1, bias=False)
            self.relu = tnn.ReLU(inplace=False)

        def forward(self, x):
            u = self.relu(self.bn1(x))
            shortcut = self.proj(u) if self.first else x
            h = self.conv1(u)
            h = self.conv2(self.relu(self.bn2(h)))
            return shortcut + h

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            blocks, cin, b = [], 16, 0
            for s, (size, w) in enumerate(zip(stage_sizes, stage_widths)):
                for i in range(size):
                    blocks.append(Block(cin, inner_widths[b][0], w, 2 if s > 0 and i == 0 else 1, i == 0))
                    cin, b = w, b + 1
            self.blocks = tnn.Sequential(*blocks)
            self.bn = tnn.BatchNorm2d(cin)
            self.head = tnn.Linear(cin, 10)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            x = tnn.functional.relu(self.bn(x)).mean((2, 3))
            return self.head(x)

    return Net()


def torch_call(net, batch_size):
    """A no-argument callable running ``net`` once in eval / inference mode, channels_last."""
    import torch

    net = net.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, 32, 32).to(memory_format=torch.channels_last)

    def call():
        with torch.inference_mode():
            net(x)

    return call


def jax_resnet56(conv, halved: bool):
    """(apply(v, x), variables, MACs per example): the registry's ResNet-56 with ``conv``, or its
    ``prune_model`` cut keeping the first half of every block's inner channels (the rest whole)."""
    model = get_model("resnet56", 10, conv=conv)
    x = jax.numpy.zeros((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    if not halved:
        return (lambda v, x: model.apply(v, x, train=False)), variables, M.count(_analysis(model, variables, x)).macs
    keep = {
        g.name: np.arange(g.size // 2 if g.name.endswith("masked_bn2") else g.size)
        for g in channel_groups(model, variables, x, train=False)
        if g.prunable
    }
    compact, compact_vars = prune_model(model, variables, x, keep=keep, train=False)
    if conv is nn.Conv:  # the replay's convs as XLA's, as the model's own
        compact.program.formulation = "xla"
    return (lambda v, x: compact.apply(v, x)), compact_vars, M.of_compact(compact).macs


def _analysis(model, variables, x):
    from soft_prune_jax.graph import analyze, trace

    with fast_conv.flax_conv_formulation("xla"):
        return analyze(trace(lambda v, x: model.apply(v, x, train=False), variables, x), strip=1)


def jax_call(apply, variables, batch_size):
    """A no-argument callable running the AOT-compiled Flax model once, inputs already on the device."""
    x = jax.device_put(jax.random.normal(jax.random.key(0), (batch_size, 32, 32, 3)))
    variables = jax.device_put(variables)
    compiled = jax.jit(apply).lower(variables, x).compile()
    return lambda: jax.block_until_ready(compiled(variables, x))


def time_round_robin(calls, runs, warmup):
    """Every callable once per round, ``runs`` rounds: load drift on a shared machine hits all alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {name: B.summarize(t) for name, t in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the results to this path")
    parser.add_argument("--torch_threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    full = [(w,) for w in (16, 32, 64) for _ in range(9)]
    halved = [(w // 2,) for (w,) in full]
    results = {
        "device": B.device_description(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "batch_size": args.batch_size,
        "load_average_before": list(os.getloadavg()),
        "sgemm_gflops": B.sgemm_rate(runs=args.runs),
        "rows": [],
    }
    calls, macs = {}, {}
    for name, widths in (("dense", full), ("halved", halved)):
        calls[(name, "torch_channels_last")] = torch_call(torch_resnet56(widths), args.batch_size)
        for label, conv in (("jax_xla", nn.Conv), ("jax_fast_conv_auto", fast_conv.Conv)):
            apply, variables, macs[name] = jax_resnet56(conv, name == "halved")
            calls[(name, label)] = jax_call(apply, variables, args.batch_size)
    timings = time_round_robin(calls, args.runs, args.warmup)
    for name in ("dense", "halved"):
        results["rows"].append(
            {"model": name, "macs": macs[name], **{label: t for (n, label), t in timings.items() if n == name}}
        )
    results["load_average_after"] = list(os.getloadavg())
    print(
        f"{results['device']}, torch {results['torch']} ({results['torch_threads']} threads), jax {results['jax']}, "
        f"batch {args.batch_size}, sgemm {results['sgemm_gflops']:.0f} GFLOP/s, load "
        f"{results['load_average_before'][0]:.2f} -> {results['load_average_after'][0]:.2f}"
    )
    print("median ms (min ms), every model once per round:")
    print(f"{'model':<8} {'MMACs':>7} | {'torch channels_last':>19} | {'jax xla':>15} | {'jax fast_conv auto':>18}")
    for row in results["rows"]:
        cells = [
            f"{row[k]['median_ms']:.1f} ({row[k]['min_ms']:.1f})"
            for k in ("torch_channels_last", "jax_xla", "jax_fast_conv_auto")
        ]
        print(f"{row['model']:<8} {row['macs'] / 1e6:>7.1f} | {cells[0]:>19} | {cells[1]:>15} | {cells[2]:>18}")
    d, h = results["rows"]
    for label in ("torch_channels_last", "jax_xla", "jax_fast_conv_auto"):
        print(
            f"speed-up dense/halved {label}: {d[label]['median_ms'] / h[label]['median_ms']:.2f}x "
            f"(MAC ratio {d['macs'] / h['macs']:.2f}x)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
