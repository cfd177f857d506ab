"""``round_to='auto'``: per masked unit, the kept width k' >= k whose convs run fastest on this device.

A compact model's speed depends on its widths as much as on its MACs: on a CPU a conv with 17 or 23
channels can be slower than one with 24, because the GEMM kernels work in vectors of 4, 8 or 16
floats. ``round_to=8`` pads every width to a multiple of 8 whether that helps or not; 'auto' looks
the widths up instead. For every masked unit with k kept channels it tries the widths
``candidates(k, total)`` (k itself and the multiples of 4 up to the next multiple of 16), times the
convs that unit's width governs (the conv producing those channels and the one reading them, the
other channel axis at its neighbour's kept width, spatial sizes as in the model) and keeps the
fastest; ties go to the smaller width. The padding channels are the next-best ones by the surgery's
ranking, so the compact model contains every channel the method kept and can only gain accuracy.

Each conv shape is timed once per device and cached (``LatencyTable``: JSON under
``~/.cache/soft_prune_jax``, keyed by device and shape); tests inject a fake table instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax.compact.structure import Structure
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.ops.conv_geometry import explicit_padding, pair

AUTO = "auto"
ALIGN = 16  # candidates reach the next multiple of this...
STEP = 4  # ...in steps of this (plus k itself)
DEFAULT_BATCH = 64
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "soft_prune_jax")


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One conv call to time: NHWC input, HWIO kernel, strides, explicit padding."""

    input_shape: tuple[int, int, int, int]
    kernel_shape: tuple[int, int, int, int]
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]

    def key(self) -> str:
        return json.dumps([self.input_shape, self.kernel_shape, self.strides, self.padding])


Latency = Callable[[ConvShape], float]  # milliseconds


def candidates(k: int, total: int) -> list[int]:
    """k and every multiple of ``STEP`` above it up to the next multiple of ``ALIGN`` (capped at total)."""
    if k <= 0:
        return [k]  # an empty layer stays empty
    top = min(total, -(-k // ALIGN) * ALIGN)
    return sorted({k, *range(-(-k // STEP) * STEP, top + 1, STEP), top} - {0})


def device_key() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind}:{os.cpu_count()} cores:jax {jax.__version__}"


def time_conv(shape: ConvShape, runs: int = 7, warmup: int = 2) -> float:
    """Median milliseconds of one jitted ``fast_conv.conv2d`` ('auto') call of this shape."""
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape.input_shape, jnp.float32)
    kernel = jax.random.normal(kk, shape.kernel_shape, jnp.float32)
    compiled = (
        jax.jit(functools.partial(fast_conv.conv2d, strides=shape.strides, padding=shape.padding))
        .lower(x, kernel)
        .compile()
    )
    for _ in range(warmup):
        jax.block_until_ready(compiled(x, kernel))
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x, kernel))
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds) * 1e3)


class LatencyTable:
    """Conv latencies of this device, measured on first use and kept in a JSON file.

    path: the JSON file (default ``CACHE_DIR/conv_latency.json``); entries are keyed by
    ``device_key()`` and the shape, so one file serves several machines and jax versions.
    """

    def __init__(self, path: Optional[str] = None, measure: Latency = time_conv):
        self.path = path or os.path.join(CACHE_DIR, "conv_latency.json")
        self.measure = measure
        self.device = device_key()
        try:
            with open(self.path) as f:
                self.entries = json.load(f)
        except (OSError, ValueError):
            self.entries = {}

    def __call__(self, shape: ConvShape) -> float:
        key = f"{self.device}|{shape.key()}"
        if key not in self.entries:
            self.entries[key] = self.measure(shape)
            self._save()
        return float(self.entries[key])

    def _save(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.entries, f)
            os.replace(tmp, self.path)  # never a half-written cache, even with concurrent writers
        except OSError:
            pass  # a read-only home: the table still works, it is just measured again next time


@dataclasses.dataclass(frozen=True)
class Auto:
    """``round_to`` value that chooses widths by latency: ``Auto()`` is what ``'auto'`` means.

    latency: ConvShape -> ms (default: a ``LatencyTable``); input_shape: one example (H, W, C),
    default 32 x 32 with the model's input channels; batch_size: the batch the widths are chosen for.
    """

    latency: Optional[Latency] = None
    input_shape: Optional[Sequence[int]] = None
    batch_size: int = DEFAULT_BATCH


@dataclasses.dataclass(frozen=True)
class Chosen:
    """``round_to`` value whose widths the caller chooses: ``choose({unit: unaligned count})`` ->
    {unit: width >= count} (``round_to='latency'``: ``method.latency.choose_widths`` over the
    network's latency tables, built by the pipeline, which knows the cost model and the device)."""

    choose: Callable[[Mapping[str, int]], Mapping[str, int]]


def conv_calls(model: nn.Module, variables, input_shape: Sequence[int], batch_size: int) -> dict[tuple, ConvShape]:
    """{conv kernel path: ConvShape} of every 2-D conv in ``model.apply(variables, x, train=False)``."""
    x = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
    calls: dict[tuple, ConvShape] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and type(module) in (nn.Conv, fast_conv.Conv) and args[0].ndim == 4:
            kernel = module.get_variable("params", "kernel")
            if kernel is not None and kernel.ndim == 4:
                strides = pair(module.strides if module.strides is not None else 1, "strides")
                pads = explicit_padding(args[0].shape[1:3], kernel.shape[:2], strides, module.padding)
                calls[tuple(module.path) + ("kernel",)] = ConvShape(
                    tuple(args[0].shape), tuple(kernel.shape), strides, tuple(map(tuple, pads))
                )
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return calls


def _default_input_shape(structure: Structure, variables) -> tuple[int, int, int]:
    kernel = variables["params"]
    for name in structure.input_kernel:
        kernel = kernel[name]
    return (32, 32, int(np.shape(kernel)[2]))


def auto_widths(
    model: nn.Module,
    variables,
    structure: Structure,
    counts: Mapping[str, int],
    totals: Mapping[str, int],
    auto: Auto = Auto(),
) -> dict[str, int]:
    """Per masked unit, the width in ``candidates(count, total)`` whose governed convs are fastest.

    counts: the widths before alignment (every other unit stays at its count while one is chosen).
    """
    latency = auto.latency or LatencyTable()
    input_shape = (
        tuple(auto.input_shape) if auto.input_shape is not None else _default_input_shape(structure, variables)
    )
    calls = conv_calls(model, variables, input_shape, auto.batch_size)
    governs: dict[tuple, list[str]] = {}  # (kernel path, axis) -> the units whose channels that axis holds
    for group in structure.groups:
        for s in group.slices:
            if s.collection == "params" and s.path in calls and s.axis in (2, 3):
                governs.setdefault((s.path, s.axis), []).append(group.name)

    def shape_with(call_path: tuple, widths: Mapping[str, int]) -> ConvShape:
        shape = calls[call_path]
        kernel = list(shape.kernel_shape)
        for axis in (2, 3):
            for unit in governs.get((call_path, axis), []):
                kernel[axis] -= totals[unit] - widths[unit]
        n, h, w, _ = shape.input_shape
        return dataclasses.replace(shape, input_shape=(n, h, w, kernel[2]), kernel_shape=tuple(kernel))

    chosen = {}
    for group in structure.groups:
        k, total = int(counts[group.name]), int(totals[group.name])
        paths = sorted({path for (path, _), units in governs.items() if group.name in units})
        options = candidates(k, total)
        if len(options) == 1 or not paths:
            chosen[group.name] = k
            continue
        cost = []
        for c in options:
            widths = {**counts, group.name: c}
            shapes = [shape_with(p, widths) for p in paths]
            cost.append(sum(latency(s) for s in shapes if min(s.kernel_shape[2:]) > 0))
        chosen[group.name] = options[int(np.argmin(cost))]  # argmin: the first (smallest) width of equal cost
    return chosen
