"""Measuring a network's latency tables on this device (``scp.latency_model.LatencyModel``), cached.

Each conv / dense layer of a ``CostModel`` is described by a ``LayerOp`` (its geometry per example:
input spatial size, kernel, strides, padding; or a dense layer's positions) and timed at a grid of
(input width, output width) pairs, at the benchmark's batch size and dtype, with the conv
formulation the models use (``fast_conv.conv2d``, 'auto'). The dense model itself is timed once; what
its tables do not cover is the model's constant rest.

A layer is timed as it runs inside a network (``in_context``): followed by a per-channel affine and
a ReLU (its BN-ReLU), its output consumed inside the same computation. Timed as the computation's
result instead, a conv costs up to twice as much on XLA:CPU (the returned buffer is written out
whole rather than consumed as it is produced), and the tables of a network summed to more than the
network itself (docs/RESULTS.md, "Latency as the budget").

Timings are cached in one JSON file per device (``Timings``: under ``~/.cache/soft_prune_jax``, keyed
by device description and jax version in the file, by batch, dtype, layer signature and widths per
entry; written atomically). A file that does not parse, holds non-numbers, or was written for
another device or jax version is not trusted: it is rebuilt with a warning.

The ops come from the traced graph (``traced.graph_ops.graph_ops``), the cost model from the same graph
(``traced.graph_cost``). Tests inject a ``measure`` function instead of timing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import time
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from soft_prune_jax.ops import fast_conv
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import latency_model as L

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "soft_prune_jax")
FORMAT = 3  # 3: layers timed in context (2: alone, as the result; 1: a low percentile)
CONV, DENSE = "conv", "dense"


@dataclasses.dataclass(frozen=True)
class LayerOp:
    """One layer's computation at any widths: a 2-D NHWC conv (``spatial`` input size, ``kernel``
    taps, ``strides``, explicit ``padding``; ``depthwise``: one group per channel) or a dense layer
    over ``positions`` rows per example."""

    kind: str
    spatial: tuple[int, int] = (1, 1)
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    depthwise: bool = False
    positions: int = 1

    def signature(self) -> str:
        return json.dumps(dataclasses.astuple(self))


Measure = Callable[[LayerOp, int, int, int, str], float]  # (op, in width, out width, batch, dtype) -> ms


def low_ms(fn: Callable, args: Sequence[Any], runs: int = 15, warmup: int = 2) -> float:
    """Milliseconds of one call of the AOT-compiled ``fn(*args)``: the fastest of ``runs``.

    A layer timed alone for a table is short, and on a shared machine another process can slow any
    run by a multiple; the fastest run is what the layer costs when it gets the machine (timeit's
    rule). What contention adds to a whole model is in its measured median, so in the model's rest."""
    compiled = jax.jit(fn).lower(*args).compile()
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - start)
    return float(np.min(seconds) * 1e3)


def in_context(layer: Callable) -> Callable:
    """``layer(x, w)`` followed by a per-channel affine and a ReLU, its output consumed by a sum: the
    layer as a network runs it (module docstring), not as a computation's returned result."""

    def run(x, w, scale):
        return jnp.sum(jax.nn.relu(layer(x, w) * scale + scale))

    return run


def time_op(op: LayerOp, n_in: int, n_out: int, batch: int, dtype: str) -> float:
    """Milliseconds (``low_ms``) of ``op`` with ``n_in`` input and ``n_out`` output channels (0 for an
    empty one), timed ``in_context``."""
    if n_in <= 0 or n_out <= 0:
        return 0.0
    rng = np.random.default_rng(0)  # NumPy draws: no compile per shape, unlike jax.random

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.dtype(dtype))

    scale = normal(n_out)
    if op.kind == DENSE:
        x, w = normal(batch * op.positions, n_in), normal(n_in, n_out)
        return low_ms(in_context(jnp.dot), (x, w, scale))
    if op.depthwise:  # one group per output channel: the input has the output's channels
        x, w = normal(batch, *op.spatial, n_out), normal(*op.kernel, 1, n_out)
        conv = functools.partial(
            jax.lax.conv_general_dilated,
            window_strides=op.strides,
            padding=op.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=n_out,
        )
        return low_ms(in_context(conv), (x, w, scale))
    x, w = normal(batch, *op.spatial, n_in), normal(*op.kernel, n_in, n_out)
    conv = functools.partial(fast_conv.conv2d, strides=op.strides, padding=op.padding)
    return low_ms(in_context(conv), (x, w, scale))


def device_key() -> str:
    """The device timings belong to: platform, kind (the CPU model on a CPU), cores and jax version."""
    device = jax.devices()[0]
    kind = device.device_kind
    if device.platform == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                kind = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), kind)
        except OSError:
            kind = platform.processor() or kind
    return f"{device.platform}: {kind} ({os.cpu_count()} cores), jax {jax.__version__}"


class Timings:
    """Layer timings of this device, measured on first use and kept in a JSON file.

    path: the file (default: one per ``device_key()`` under ``CACHE_DIR``); measure: the timer
    (default ``time_op``); device: the key the file must carry (default ``device_key()``)."""

    def __init__(self, path: Optional[str] = None, measure: Optional[Measure] = None, device: Optional[str] = None):
        self.device = device or device_key()
        digest = hashlib.sha1(self.device.encode()).hexdigest()[:12]
        self.path = path or os.path.join(CACHE_DIR, f"latency-{digest}.json")
        self.measure = measure or time_op
        self.entries = self._load()

    def _load(self) -> dict[str, float]:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            warnings.warn(f"latency cache {self.path} is damaged ({e}): measuring again", stacklevel=3)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] < FORMAT:
            warnings.warn(
                f"latency cache {self.path} holds timings of an older rule (format {data['format']}, "
                f"now {FORMAT}): measuring again",
                stacklevel=3,
            )
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(entries, dict):
            warnings.warn(f"latency cache {self.path} is damaged (not format {FORMAT}): measuring again", stacklevel=3)
            return {}
        if data.get("device") != self.device:
            warnings.warn(
                f"latency cache {self.path} was measured on {data.get('device')!r}, not on this device "
                f"({self.device!r}): measuring again",
                stacklevel=3,
            )
            return {}
        if not all(isinstance(v, (int, float)) and np.isfinite(v) and v >= 0 for v in entries.values()):
            warnings.warn(
                f"latency cache {self.path} is damaged (entries that are not times): measuring again", stacklevel=3
            )
            return {}
        return {str(k): float(v) for k, v in entries.items()}

    def ms(self, op: LayerOp, n_in: int, n_out: int, batch: int, dtype: str) -> float:
        key = json.dumps([batch, dtype, op.signature(), int(n_in), int(n_out)])
        if key not in self.entries:
            self.entries[key] = float(self.measure(op, int(n_in), int(n_out), batch, dtype))
            self._save()
        return self.entries[key]

    def _save(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"format": FORMAT, "device": self.device, "entries": self.entries}, f)
            os.replace(tmp, self.path)  # never a half-written cache, even with concurrent writers
        except OSError:
            pass  # a read-only home: the timings still work, they are just measured again next time


def layer_ms(cost: B.CostModel, ops: Mapping[str, LayerOp], timings: Timings, batch: int, dtype: str) -> L.LayerMs:
    """A ``LayerMs`` timing each layer at exactly the widths asked (cached); layers without an op
    (or grouped convs other than depthwise ones) cost nothing extra: they are in the rest."""
    timed = {layer.path for layer in cost.layers if layer.path in ops and _timeable(layer, ops[layer.path])}

    def ms(path: str, n_in: int, n_out: int) -> float:
        return timings.ms(ops[path], n_in, n_out, batch, dtype) if path in timed else 0.0

    return ms


def _timeable(layer: B.CostLayer, op: LayerOp) -> bool:
    return not op.depthwise or layer.in_channels == 1


def latency_model(
    cost: B.CostModel,
    ops: Mapping[str, LayerOp],
    dense_ms: float,
    timings: Optional[Timings] = None,
    batch: int = 64,
    dtype: str = "float32",
) -> L.LatencyModel:
    """The ``LatencyModel`` of a network: a table per timed layer over ``L.grid`` of each axis (an
    axis no group governs only at its full width), and the rest of the measured ``dense_ms``.

    The cached entries may have been timed at another moment than ``dense_ms`` (a quiet machine then,
    a loaded one now, or the reverse), and the rest must compare like with like: so each layer is
    timed again now at its full widths, the tables are scaled by (sum now) / (sum cached) and the rest
    is ``dense_ms`` less the layers timed now, never below 0 (``LatencyModel.scale`` keeps the factor)."""
    timings = timings or Timings()
    ms = layer_ms(cost, ops, timings, batch, dtype)
    grids = [
        (
            layer.path,
            L.grid(layer.in_channels) if layer.in_terms else (layer.in_channels,),
            L.grid(layer.out_channels) if layer.out_terms else (layer.out_channels,),
        )
        for layer in cost.layers
        if layer.path in ops and _timeable(layer, ops[layer.path])
    ]
    entries = len(timings.entries)
    start = time.perf_counter()
    logging.info(
        "latency tables: %d layers at batch %d (%s), cached in %s", len(grids), batch, timings.device, timings.path
    )
    tables = []
    for path, in_grid, out_grid in grids:
        table = tuple(tuple(ms(path, a, b) for b in out_grid) for a in in_grid)
        tables.append(L.LayerTable(path, in_grid, out_grid, table))
    logging.info(
        "latency tables: %d widths timed, the rest from the cache, in %.1f s",
        len(timings.entries) - entries,
        time.perf_counter() - start,
    )
    cached = sum(t.ms[-1][-1] for t in tables)
    now = sum(timings.measure(ops[t.path], t.in_grid[-1], t.out_grid[-1], batch, dtype) for t in tables)
    scale = now / cached if cached > 0 and now > 0 else 1.0
    if abs(scale - 1.0) > 0.1:
        logging.info("latency tables: the machine runs at %.2fx the cached timings now; tables scaled", 1 / scale)
    if now > dense_ms > 0:
        # Each layer is timed with its consumer after it, so together they cannot take longer than the
        # network that holds them; where they do, the machine's speed moved between the two timings (a
        # shared VM's does, by tens of percent). A negative rest would shrink every compact estimate by
        # the same milliseconds; the layers are brought down to the dense latency instead (rest 0).
        logging.info("latency tables: layers %.2f ms, dense model %.2f ms: tables scaled to it", now, dense_ms)
        scale, now = scale * dense_ms / now, float(dense_ms)
    tables = [dataclasses.replace(t, ms=tuple(tuple(v * scale for v in row) for row in t.ms)) for t in tables]
    return L.LatencyModel(
        tuple(tables), float(dense_ms) - now, float(dense_ms), batch, dtype, timings.device, scale=scale
    )


def check_device(model: L.LatencyModel, device: Optional[str] = None) -> None:
    """Raises when ``model`` was measured on another device (or jax version) than this one."""
    here = device or device_key()
    if model.device != here:
        raise ValueError(
            f"latency table measured on {model.device!r} cannot price this device ({here!r}): "
            "expected a table measured here"
        )
