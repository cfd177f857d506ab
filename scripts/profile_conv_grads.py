"""Per conv shape of a model: forward, input-gradient and weight-gradient times, XLA's against ours.

    python scripts/profile_conv_grads.py --model=fmnist_cnn --batch_size=128 --input_shape=28,28,1
    python scripts/profile_conv_grads.py --model=resnet56 --batch_size=64 [--json=PATH]

For every distinct conv shape of ``model.apply(..., train=False)`` (``benchmark.layer_shapes``) it
times, interleaved run by run: the forward conv ('auto' formulation), the input gradient and the
weight gradient as XLA computes them (``weight_grad='autodiff'`` of the forward) and the weight
gradient by the formulation ``ops.conv_grad`` picks. The machine's load is printed with the table:
on a shared machine compare the columns of one row, not rows of different runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp

from soft_prune_jax.measure import timing as B
from soft_prune_jax.models import get_model
from soft_prune_jax.ops import conv_grad, fast_conv


def _grad_fns(layer: B.LayerShape, weight_grad: str):
    conv = functools.partial(fast_conv.conv2d, strides=layer.strides, padding=layer.padding, weight_grad=weight_grad)

    def input_grad(x, kernel, dy):
        return jax.vjp(lambda x_: conv(x_, kernel), x)[1](dy)[0]

    def kernel_grad(x, kernel, dy):
        return jax.vjp(lambda k_: conv(x, k_), kernel)[1](dy)[0]

    return conv, input_grad, kernel_grad


def profile(model, variables, batch_size, input_shape, runs):
    rows, seen = [], set()
    for layer in B.layer_shapes(model, variables, batch_size, input_shape):
        if layer.kind != "conv" or layer.key() in seen:
            continue
        seen.add(layer.key())
        kx, kk = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, layer.input_shape, jnp.float32)
        kernel = jax.random.normal(kk, layer.kernel_shape, jnp.float32)
        forward, input_grad, xla_kernel_grad = _grad_fns(layer, "autodiff")
        dy = jax.random.normal(kk, jax.eval_shape(forward, x, kernel).shape, jnp.float32)
        ours = _grad_fns(layer, "auto")[2]
        times = B.time_interleaved(
            {
                "forward": (forward, (x, kernel)),
                "input_grad": (input_grad, (x, kernel, dy)),
                "weight_grad_xla": (xla_kernel_grad, (x, kernel, dy)),
                "weight_grad_ours": (ours, (x, kernel, dy)),
            },
            runs=runs,
            warmup=2,
        )
        forward_formulation = fast_conv.choose_formulation(
            layer.input_shape, layer.kernel_shape, layer.strides, layer.padding
        )
        rows.append(
            {
                "path": layer.path,
                "input_shape": list(layer.input_shape),
                "kernel_shape": list(layer.kernel_shape),
                "strides": list(layer.strides),
                "macs": layer.macs,
                "weight_grad_formulation": conv_grad.choose_weight_grad(layer.kernel_shape, forward_formulation),
                **{name: t["median_ms"] for name, t in times.items()},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--input_shape", default="32,32,3")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    input_shape = tuple(int(v) for v in args.input_shape.split(","))
    model = get_model(args.model, 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + input_shape), train=False)
    rows = profile(model, variables, args.batch_size, input_shape, args.runs)
    print(f"{B.device_description()}, jax {jax.__version__}, load {os.getloadavg()[0]:.1f}; medians in ms")
    print(
        f"{'first layer':<22} {'input':<16} {'kernel':<12} {'s':>1} | {'fwd':>7} {'dx':>7} {'dw xla':>8} "
        f"{'dw ours':>8} ({'formulation'})"
    )
    for r in rows:
        print(
            f"{r['path'][:22]:<22} {'x'.join(map(str, r['input_shape'])):<16} "
            f"{'x'.join(map(str, r['kernel_shape'])):<12} {r['strides'][0]:>1} | {r['forward']:>7.2f} "
            f"{r['input_grad']:>7.2f} {r['weight_grad_xla']:>8.2f} {r['weight_grad_ours']:>8.2f} "
            f"({r['weight_grad_formulation']})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": B.device_description(), "load_average": list(os.getloadavg()), "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
