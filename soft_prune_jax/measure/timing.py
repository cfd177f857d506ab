"""Jitted latency measurement: whole models, single layers, the machine's sgemm rate, train steps.

Every timing follows one protocol (``time_compiled``): the function is AOT-compiled
(``jax.jit(f).lower(*args).compile()``) so compilation is never timed, its inputs are already on
the device (``jax.device_put``), a few warm-up calls run first, and each timed call ends with
``block_until_ready``. The median of many runs is the number to quote; p10/p90 show the spread
(on a shared machine, compare medians taken in the same process, minutes apart at most).

A latency alone cannot show whether a model runs well on a machine, so everything here can be
put next to ``sgemm_rate()``: the GFLOP/s of a jitted 2048^3 float32 matmul, the rate the machine
reaches on the friendliest possible work. ``flop_rate(macs, ms)`` (2 FLOPs per MAC) of a model or
of one layer, over the sgemm rate, says how close to that limit it gets; ``time_layers`` times
every conv/dense layer alone so that one pathological conv shape cannot hide inside a total.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from soft_prune_jax import host_memory
from soft_prune_jax.ops import fast_conv
from soft_prune_jax.ops.conv_geometry import explicit_padding, output_spatial, pair

DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5
SGEMM_SIZE = 2048


# ---------------------------------------------------------------------------------------------
# The protocol.
# ---------------------------------------------------------------------------------------------


def _check_counts(runs: int, warmup: int) -> None:
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise ValueError(f"runs={runs!r} is invalid: expected an int >= 1")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} is invalid: expected an int >= 0")


def device_description(device: Optional[jax.Device] = None) -> str:
    """'cpu: <processor model> (N cores)' or '<platform>: <device kind>', for result tables."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        model = platform.processor() or "unknown"
        try:
            with open("/proc/cpuinfo") as f:
                names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            model = names[0] if names else model
        except OSError:
            pass
        return f"cpu: {model} ({os.cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind}"


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """median/p10/p90/min of a list of durations, in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(np.min(ms)),
        "runs": int(ms.size),
    }


def time_compiled(
    fn: Callable, args: Sequence[Any], *, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP
) -> dict[str, float]:
    """Times ``fn(*args)`` by the protocol above; returns ``summarize`` of the runs plus 'compile_s'.

    ``args`` are put on the default device first; ``fn`` must be jit-able with them.
    """
    _check_counts(runs, warmup)
    args = jax.device_put(tuple(args))
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - start)
    return {**summarize(seconds), "compile_s": compile_s}


def time_interleaved(
    calls: Mapping[str, tuple[Callable, Sequence[Any]]], *, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP
) -> dict[str, dict[str, float]]:
    """Times several ``{name: (fn, args)}`` by the same protocol, taking turns run by run.

    On a shared machine the load drifts within seconds; alternating A, B, A, B, ... exposes every
    function to the same drift, so their ratio is fairer than that of two back-to-back blocks.
    """
    _check_counts(runs, warmup)
    compiled, placed, compile_s = {}, {}, {}
    for name, (fn, args) in calls.items():
        placed[name] = jax.device_put(tuple(args))
        start = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(*placed[name]).compile()
        compile_s[name] = time.perf_counter() - start
        for _ in range(warmup):
            jax.block_until_ready(compiled[name](*placed[name]))
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name in calls:
            start = time.perf_counter()
            jax.block_until_ready(compiled[name](*placed[name]))
            seconds[name].append(time.perf_counter() - start)
    return {name: {**summarize(seconds[name]), "compile_s": compile_s[name]} for name in calls}


def flop_rate(macs: float, milliseconds: float) -> float:
    """GFLOP/s of ``macs`` multiply-accumulates (2 FLOPs each) done in ``milliseconds``."""
    return 2.0 * macs / (milliseconds * 1e-3) / 1e9 if milliseconds > 0 else float("nan")


def sgemm_rate(*, size: int = SGEMM_SIZE, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP) -> float:
    """GFLOP/s of a jitted ``size``^3 float32 matmul (median run): the machine's reference rate."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r} is invalid: expected an int >= 1")
    rng = np.random.default_rng(0)  # NumPy draws here and below: jax.random compiles once per shape
    a, b = (jnp.asarray(rng.standard_normal((size, size), np.float32)) for _ in range(2))
    result = time_compiled(jnp.matmul, (a, b), runs=runs, warmup=warmup)
    return flop_rate(size**3, result["median_ms"])


def random_inputs(batch_size: int, input_shape: Sequence[int], seed: int):
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid: expected an int >= 1")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"input_shape={tuple(input_shape)!r} is invalid: expected positive ints (H, W, C)")
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch_size,) + shape, np.float32))


def with_formulation(apply: Callable, formulation: Optional[str]) -> Callable:
    """``apply`` whose nn.Conv calls run through ``fast_conv.conv2d(formulation)`` while tracing."""
    if formulation is None:
        return apply

    @functools.wraps(apply)
    def wrapped(*args, **kwargs):
        with fast_conv.flax_conv_formulation(formulation):
            return apply(*args, **kwargs)

    return wrapped


# ---------------------------------------------------------------------------------------------
# Whole models.
# ---------------------------------------------------------------------------------------------


def _apply_eval(model: nn.Module, variables, x):
    return model.apply(variables, x, train=False)


def time_inference(
    model: nn.Module,
    variables: Mapping[str, Any],
    batch_size: int,
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    seed: int = 0,
    input_shape: Sequence[int] = (32, 32, 3),
    conv_formulation: Optional[str] = None,
) -> dict[str, Any]:
    """Latency of ``model.apply(variables, x, train=False)`` for a random batch of ``batch_size``.

    Args:
      input_shape: one example (H, W, C); CIFAR by default.
      conv_formulation: None runs the model as built; 'xla', 'im2col', 'matmul' or 'auto' runs its
        ``nn.Conv`` layers through ``fast_conv.conv2d`` with that formulation.
    Returns: {median_ms, p10_ms, p90_ms, min_ms, runs, batch_size, device, compile_s}.
    """
    x = random_inputs(batch_size, input_shape, seed)
    apply = with_formulation(functools.partial(_apply_eval, model), conv_formulation)
    result = time_compiled(apply, (variables, x), runs=runs, warmup=warmup)
    return {**result, "batch_size": batch_size, "device": device_description()}


# ---------------------------------------------------------------------------------------------
# Single layers.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One conv/dense call of a model: enough to rebuild and time it alone."""

    path: str
    kind: str  # 'conv' | 'dense'
    input_shape: tuple[int, ...]  # with the batch axis
    kernel_shape: tuple[int, ...]  # conv: (kh, kw, in, out); dense: (in, out)
    strides: tuple[int, int]  # (1, 1) for dense layers
    padding: Any  # 'SAME' | 'VALID' | ((lo, hi), (lo, hi)); None for dense layers

    @property
    def macs(self) -> int:
        """MACs for the whole batch (the ``measure.flops`` convention: kernel size times output positions)."""
        if self.kind == "dense":
            return math.prod(self.input_shape[:-1]) * self.kernel_shape[-1] * self.kernel_shape[0]
        pads = explicit_padding(self.input_shape[1:3], self.kernel_shape[:2], self.strides, self.padding)
        ho, wo = output_spatial(self.input_shape[1:3], self.kernel_shape[:2], self.strides, pads)
        return self.input_shape[0] * ho * wo * math.prod(self.kernel_shape)

    def key(self) -> tuple:
        return (self.kind, self.input_shape, self.kernel_shape, self.strides, str(self.padding))


def layer_shapes(
    model: nn.Module, variables: Mapping[str, Any], batch_size: int, input_shape: Sequence[int] = (32, 32, 3)
) -> list[LayerShape]:
    """Every ``nn.Conv``/``nn.Dense`` call of ``model.apply(variables, x, train=False)``, in call order.

    Found with ``nn.intercept_methods`` under ``jax.eval_shape`` (nothing is computed). Unlike the
    rows of ``traced.macs.count`` these keep strides and padding, which timing a layer alone needs.
    """
    x = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
    rows: list[LayerShape] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and type(module) in (nn.Conv, fast_conv.Conv, nn.Dense):
            kernel_shape = tuple(module.get_variable("params", "kernel").shape)
            if isinstance(module, nn.Dense):
                rows.append(
                    LayerShape("/".join(module.path), "dense", tuple(args[0].shape), kernel_shape, (1, 1), None)
                )
            else:
                strides = pair(module.strides if module.strides is not None else 1, "strides")
                padding = module.padding
                padding = padding.upper() if isinstance(padding, str) else tuple(map(tuple, padding))
                rows.append(
                    LayerShape("/".join(module.path), "conv", tuple(args[0].shape), kernel_shape, strides, padding)
                )
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return rows


def time_layer(
    layer: LayerShape,
    *,
    formulation: str = "xla",
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    seed: int = 0,
) -> dict[str, Any]:
    """Times one layer alone on random data: {median_ms, ..., macs, gflops, formulation}."""
    rng = np.random.default_rng(seed)
    x, kernel = (jnp.asarray(rng.standard_normal(s, np.float32)) for s in (layer.input_shape, layer.kernel_shape))
    if layer.kind == "dense":
        fn, used = jnp.dot, "matmul"
    else:
        used = (
            fast_conv.choose_formulation(layer.input_shape, layer.kernel_shape, layer.strides, layer.padding)
            if formulation == "auto"
            else formulation
        )
        fn = functools.partial(fast_conv.conv2d, strides=layer.strides, padding=layer.padding, formulation=used)
    result = time_compiled(fn, (x, kernel), runs=runs, warmup=warmup)
    return {**result, "macs": layer.macs, "gflops": flop_rate(layer.macs, result["median_ms"]), "formulation": used}


def time_layers(
    model: nn.Module,
    variables: Mapping[str, Any],
    batch_size: int,
    *,
    input_shape: Sequence[int] = (32, 32, 3),
    formulations: Sequence[str] = ("xla",),
    runs: int = 10,
    warmup: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per-layer latency and FLOP rate of every conv/dense layer, timed alone, per formulation.

    Layers with identical shapes are timed once (a ResNet-56 has 57 convs but 9 distinct shapes).
    Returns one row per distinct shape: {paths, count, kind, input_shape, kernel_shape, strides,
    macs, <formulation>: {median_ms, gflops, formulation, ...}} in first-call order.
    """
    layers = layer_shapes(model, variables, batch_size, input_shape)
    return time_layer_shapes(layers, formulations=formulations, runs=runs, warmup=warmup, seed=seed)


def time_layer_shapes(
    layers: Sequence[LayerShape],
    *,
    formulations: Sequence[str] = ("xla",),
    runs: int = 10,
    warmup: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``time_layers``' rows for ``layers`` however they were found (e.g. read off a traced graph)."""
    for f in formulations:
        if f not in fast_conv.FORMULATIONS:
            raise ValueError(f"formulation={f!r} is invalid: expected one of {', '.join(fast_conv.FORMULATIONS)}")
    groups: dict[tuple, list[LayerShape]] = {}
    for layer in layers:
        groups.setdefault(layer.key(), []).append(layer)
    rows = []
    for same in groups.values():
        layer = same[0]
        row = {
            "paths": [each.path for each in same],
            "count": len(same),
            "kind": layer.kind,
            "input_shape": list(layer.input_shape),
            "kernel_shape": list(layer.kernel_shape),
            "strides": list(layer.strides),
            "macs": layer.macs,
        }
        for f in formulations:
            row[f] = time_layer(layer, formulation=f, runs=runs, warmup=warmup, seed=seed)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Train steps.
# ---------------------------------------------------------------------------------------------


def time_train_steps(
    forward: tuple[Callable, Sequence[Any]],
    steps: Mapping[str, tuple[Callable, Sequence[Any]]],
    *,
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, Any]:
    """Times train steps against the jitted inference forward of the same model and batch.

    ``forward`` and each of ``steps`` are ``(fn, args)``; the caller builds them (the training
    package's own ``train_step``, see ``launch/benchmark.py --train_step``), so what is timed is the
    step that trains, not a copy. All take turns run by run (``time_interleaved``). Returns
    {'forward': timings, name: timings, ..., 'over_forward': {name: median / forward median},
    'device'}, plus 'ratio' = scp median / plain median when steps named 'scp' and 'plain' exist.
    """
    if "forward" in steps:
        raise ValueError("a train step may not be named 'forward': expected other names")
    results = time_interleaved({"forward": forward, **steps}, runs=runs, warmup=warmup)
    out: dict[str, Any] = {
        **results,
        "device": device_description(),
        "over_forward": {name: results[name]["median_ms"] / results["forward"]["median_ms"] for name in steps},
    }
    if "scp" in steps and "plain" in steps:
        out["ratio"] = results["scp"]["median_ms"] / results["plain"]["median_ms"]
    return out


# ---------------------------------------------------------------------------------------------
# Dense against compact: the numbers a results page needs.
# ---------------------------------------------------------------------------------------------


def compare(
    dense: nn.Module,
    dense_variables: Mapping[str, Any],
    compact: Optional[nn.Module] = None,
    compact_variables: Optional[Mapping[str, Any]] = None,
    *,
    input_shape: Sequence[int] = (32, 32, 3),
    batch_sizes: Sequence[int] = (1, 64, 256),
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    conv_formulation: Optional[str] = None,
    seed: int = 0,
    macs: Mapping[str, Mapping[str, int]],
    timer: Optional[Callable[[int], Mapping[str, Mapping[str, Any]]]] = None,
) -> dict[str, Any]:
    """Latency, MACs and FLOP rates of a dense model and (optionally) its compact version.

    macs: {'dense'|'compact': {'macs', 'params'}} per example, from the graph's count
    (``traced.macs.count``; the caller has the traced model, this module measures only).

    Per batch size: both timings (dense and compact take turns, ``time_interleaved``), the speed-up,
    the MAC ratio (dense MACs / compact MACs), their
    quotient (1.0 = the speed-up is all the MAC cut promises) and each model's GFLOP/s over the
    sgemm rate. The sgemm rate is measured before and after the model timings (a gap between the
    two means the machine's load changed meanwhile); rates use the mean of the two. ``timer(batch)``,
    if given, times instead ({'dense': timing, 'compact': timing}, e.g. in a fresh process).
    """
    if (compact is None) != (compact_variables is None):
        raise ValueError("compact and compact_variables must be given together (or neither)")
    for b in batch_sizes:
        if not isinstance(b, int) or isinstance(b, bool) or b < 1:
            raise ValueError(f"batch size {b!r} is invalid: expected ints >= 1")
    models = {"dense": (dense, dense_variables)}
    if compact is not None:
        models["compact"] = (compact, compact_variables)
    result: dict[str, Any] = {
        "device": device_description(),
        "jax_version": jax.__version__,
        "host_malloc": host_memory.state(),  # timings on the CPU depend on it (soft_prune_jax/host_memory.py)
        "load_average": list(os.getloadavg()),
        "input_shape": list(input_shape),
        "conv_formulation": conv_formulation or "model",
        "runs": runs,
        "sgemm_gflops_before": sgemm_rate(runs=runs, warmup=warmup),
    }
    for name in models:
        if name not in macs:
            raise ValueError(f"macs has no {name!r} count: expected {{'dense', 'compact'}} counts of the models timed")
        result[name] = dict(macs[name])
    if compact is not None:
        result["mac_ratio"] = result["dense"]["macs"] / max(result["compact"]["macs"], 1)
        result["macs_reduction_pct"] = 100.0 * (1.0 - result["compact"]["macs"] / result["dense"]["macs"])
    rows = []
    device = device_description()
    for b in batch_sizes:
        x = random_inputs(b, input_shape, seed)
        calls = {
            name: (with_formulation(functools.partial(_apply_eval, model), conv_formulation), (variables, x))
            for name, (model, variables) in models.items()
        }
        # dense and compact take turns
        timings = dict(timer(b)) if timer is not None else time_interleaved(calls, runs=runs, warmup=warmup)
        rows.append(
            {"batch_size": b, **{name: {**t, "batch_size": b, "device": device} for name, t in timings.items()}}
        )
    result["sgemm_gflops_after"] = sgemm_rate(runs=runs, warmup=warmup)
    sgemm = 0.5 * (result["sgemm_gflops_before"] + result["sgemm_gflops_after"])
    result["sgemm_gflops"] = sgemm
    for row in rows:
        for name in models:
            gflops = flop_rate(result[name]["macs"] * row["batch_size"], row[name]["median_ms"])
            row[f"{name}_gflops"] = gflops
            row[f"{name}_sgemm_fraction"] = gflops / sgemm
        if compact is not None:
            row["speedup"] = row["dense"]["median_ms"] / row["compact"]["median_ms"]
            row["speedup_over_mac_ratio"] = row["speedup"] / result["mac_ratio"]
    result["rows"] = rows
    result["load_average_after"] = list(os.getloadavg())
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of ``compare``'s result for humans."""
    has_compact = "compact" in result
    lines = [
        f"device: {result['device']}  jax {result['jax_version']}  load avg {result['load_average'][0]:.2f}"
        f" -> {result['load_average_after'][0]:.2f}",
        f"sgemm {SGEMM_SIZE}^3 float32: {result['sgemm_gflops_before']:.0f} / {result['sgemm_gflops_after']:.0f}"
        f" GFLOP/s (before / after)   input {tuple(result['input_shape'])}   convs: {result['conv_formulation']}",
        f"dense: {result['dense']['macs'] / 1e6:.2f} M MACs/example, {result['dense']['params'] / 1e6:.3f} M params",
    ]
    if has_compact:
        lines.append(
            f"compact: {result['compact']['macs'] / 1e6:.2f} M MACs/example, "
            f"{result['compact']['params'] / 1e6:.3f} M params   MAC reduction "
            f"{result['macs_reduction_pct']:.1f}% (ratio {result['mac_ratio']:.2f}x)"
        )
    header = f"{'batch':>5} | {'dense ms':>9} {'p10-p90':>15} {'GF/s':>6} {'%sgemm':>6}"
    if has_compact:
        header += f" | {'compact ms':>10} {'p10-p90':>15} {'GF/s':>6} {'%sgemm':>6} | {'speed-up':>8} {'/MACratio':>9}"
    lines += [header, "-" * len(header)]
    for row in result["rows"]:
        d = row["dense"]
        line = (
            f"{row['batch_size']:>5} | {d['median_ms']:>9.2f} {d['p10_ms']:>7.2f}-{d['p90_ms']:<7.2f} "
            f"{row['dense_gflops']:>6.1f} {100 * row['dense_sgemm_fraction']:>5.0f}%"
        )
        if has_compact:
            c = row["compact"]
            line += (
                f" | {c['median_ms']:>10.2f} {c['p10_ms']:>7.2f}-{c['p90_ms']:<7.2f} {row['compact_gflops']:>6.1f}"
                f" {100 * row['compact_sgemm_fraction']:>5.0f}% | {row['speedup']:>7.2f}x"
                f" {row['speedup_over_mac_ratio']:>9.2f}"
            )
        lines.append(line)
    return "\n".join(lines)


def format_layers(rows: Sequence[Mapping[str, Any]], formulations: Sequence[str], sgemm: Optional[float] = None) -> str:
    """A per-layer table of ``time_layers`` rows: shapes, MACs, ms and GFLOP/s per formulation."""
    header = f"{'layer (count)':<28} {'input':<18} {'kernel':<18} {'s':>2} {'MMACs':>8}"
    for f in formulations:
        header += f" | {f + ' ms':>10} {'GF/s':>6}" + (f" {'%sg':>4}" if sgemm else "")
    lines = [header, "-" * len(header)]
    for row in rows:
        name = f"{row['paths'][0]} ({row['count']})"
        line = (
            f"{name:<28.28} {'x'.join(map(str, row['input_shape'])):<18} "
            f"{'x'.join(map(str, row['kernel_shape'])):<18} {row['strides'][0]:>2} {row['macs'] / 1e6:>8.1f}"
        )
        for f in formulations:
            t = row[f]
            line += f" | {t['median_ms']:>10.3f} {t['gflops']:>6.1f}" + (
                f" {100 * t['gflops'] / sgemm:>3.0f}%" if sgemm else ""
            )
        lines.append(line)
    return "\n".join(lines)
