"""Shared test fixtures: a synthetic in-memory dataset with the layout of ``training.data``, the tiny
config of the shared schema, a module-wide tiny model (``training_phase(tiny_config())``'s), and tiny
versions of every architecture with random variables (``TINY``, ``tiny``) for the cut's exactness.

The plain helpers (``SyntheticData``, ``tiny_config``, ``tiny``, ...) are imported
by name (``from conftest import ...``): subprocess children of the parallel, multi-host and
fault tests need them outside pytest, and ``tiny_config(**overrides)`` reads best as a call.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from configs import default
from soft_prune_jax import host_memory
from soft_prune_jax.models import get_model

# As the launchers do, before JAX starts its backend: the tests train on the CPU too.
host_memory.retain_freed_memory()
# ...but time in their own process (and in every process they start): the fresh-process timing the
# policy would switch on is tested on purpose (tests/test_pipeline.py), not by every benchmark phase.
os.environ["SOFT_PRUNE_JAX_FRESH_TIMING"] = "never"

# One XLA compilation cache for the whole run, shared by the xdist workers and by every process the
# launcher, fault and multi-host tests start (they inherit the environment): most of the suite's time
# is compiling the same tiny programs again in other tests and processes. A cache directory the
# caller chose wins; one this run made is removed by the process that made it (pytest_unconfigure).
_OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="soft_prune_jax_tests_xla_")
for _option in ("jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes"):
    os.environ[_option.upper()] = "0"  # every program, however small or quick to compile
    jax.config.update(_option, 0)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_unconfigure(config):
    if _OWN_XLA_CACHE is not None:
        shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)


# The cut's tests check algebra: the compact network must reproduce the masked one to float32
# rounding. On a GPU, XLA's default precision runs f32 convs and matmuls in TF32 (10-bit mantissa),
# whose rounding differs between the dense and the narrower compact shapes; full precision there
# makes the comparison the same one the CPU makes. A no-op on the CPU.
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")

TINY_WIDTHS = (4, "M", 8)
DatasetInfo = collections.namedtuple("DatasetInfo", "num_classes input_shape num_train num_test")


class SyntheticData:
    """Learnable class prototypes plus noise, served with the layout of soft_prune_jax.training.data.

    The order of training examples is a function of the iterator's seed only. ``kill_at`` raises
    KeyboardInterrupt when that many training batches have been served (a killed run), ``nan_at``
    serves NaN images from that batch on (a diverging run).
    """

    def __init__(self, num_train=256, num_test=36, shape=(8, 8, 1), num_classes=10, kill_at=None, nan_at=None):
        rng = np.random.default_rng(1234)
        prototypes = rng.normal(size=(num_classes,) + shape).astype(np.float32)

        def make(n):
            labels = rng.integers(0, num_classes, n).astype(np.int32)
            images = prototypes[labels] + 0.3 * rng.normal(size=(n,) + shape).astype(np.float32)
            return images.astype(np.float32), labels

        self.train, self.test = make(num_train), make(num_test)
        self.shape, self.num_classes = shape, num_classes
        self.kill_at, self.nan_at = kill_at, nan_at
        self.served = 0

    def get_dataset_info(self, config):
        return DatasetInfo(
            self.num_classes, self.shape, config.num_train_examples or len(self.train[1]), len(self.test[1])
        )

    def train_iterator(self, config, *, local_devices, seed):
        images, labels = self.train
        n = config.num_train_examples or len(labels)
        bs = config.batch_size
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(n)
            for i in range(n // bs):
                if self.kill_at is not None and self.served == self.kill_at:
                    raise KeyboardInterrupt(f"killed after {self.served} batches")
                idx = order[i * bs : (i + 1) * bs]
                x = images[idx].copy()
                if self.nan_at is not None and self.served >= self.nan_at:
                    x[:] = np.nan
                self.served += 1
                yield {
                    "image": x.reshape((local_devices, -1) + x.shape[1:]),
                    "label": labels[idx].reshape(local_devices, -1),
                }

    def eval_iterator(self, config, *, local_devices, split="test"):
        images, labels = self.test
        bs = config.eval_batch_size
        for start in range(0, len(labels), bs):
            x, y = images[start : start + bs], labels[start : start + bs]
            mask = np.ones(bs, np.float32)
            mask[len(y) :] = 0
            pad = bs - len(y)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            yield {
                "image": x.reshape((local_devices, -1) + x.shape[1:]),
                "label": y.reshape(local_devices, -1),
                "mask": mask.reshape(local_devices, -1),
            }


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """configs/default.py's schema with a tiny fmnist_cnn and the synthetic data's sizes."""
    c = default.get_config()
    c.update(
        dict(
            model="fmnist_cnn",
            model_kwargs={"widths": TINY_WIDTHS},
            dataset="fashion_mnist",
            batch_size=16,
            eval_batch_size=16,
            num_epochs=2,
            lr_boundaries=(1,),
            weight_decay=1e-4,
            sparsity_lambda=1e-3,
            finetune_epochs=1,
            log_every_steps=2,
            num_train_examples=256,
            benchmark_batch_sizes=(8,),
            benchmark_runs=3,
            round_to=1,  # no timing in the tests' cuts (test_latency.py runs round_to='latency' on a fake device)
        )
    )
    c.update(overrides)
    return c


# name -> (constructor overrides for a tiny model, input shape, num_classes): depth and width shrunk,
# the structure that decides the units kept (vgg19 / resnet110 / resnet34 / resnet101: their own layouts)
TINY = {
    "fmnist_cnn": (dict(widths=(8, "M", 12, 16)), (2, 12, 12, 1), 10),
    "vgg16": (dict(widths=(4, 6, "M", 8, "M", 8, 5)), (2, 8, 8, 3), 10),
    "vgg19": (dict(widths=(4, 4, "M", 6, 6, 6, 6, "M", 8)), (2, 8, 8, 3), 10),
    # stem 8 = stage 1's width: an identity first block, as ResNet-56's (16 -> 16)
    "resnet56": (dict(stage_sizes=(2, 2, 2), stage_widths=(8, 16, 16), stem_width=8), (2, 8, 8, 3), 10),
    "resnet110": (dict(stage_sizes=(3, 1, 2), stage_widths=(4, 6, 8), stem_width=4), (2, 8, 8, 3), 10),
    "resnet164": (dict(stage_sizes=(2, 1, 2), stage_widths=(4, 8, 8)), (2, 8, 8, 3), 10),
    "densenet40": (dict(num_blocks=2, layers_per_block=2, growth_rate=4, stem_width=6), (2, 8, 8, 3), 10),
    # stage 1 at the stem's 64: an identity first block and an unmasked stem, as ResNet-18/34's; the
    # bottleneck ones project (4 * 4 != 64), so their stem is a unit, as ResNet-50/101's
    "resnet18": (dict(stage_sizes=(1, 2, 1, 1), stage_widths=(64, 8, 16, 16)), (2, 32, 32, 3), 7),
    "resnet34": (dict(stage_sizes=(2, 1, 1, 1), stage_widths=(64, 8, 8, 8)), (2, 32, 32, 3), 7),
    "resnet50": (dict(stage_sizes=(1, 2, 1, 1), stage_widths=(4, 8, 8, 8)), (2, 32, 32, 3), 7),
    "resnet101": (dict(stage_sizes=(1, 1, 2, 1), stage_widths=(4, 4, 8, 8)), (2, 32, 32, 3), 7),
}
_CACHE = {}


def tiny_model(name, **overrides):
    """The tiny built-in ``name`` as the registry builds it (BN unsynchronised: applied outside a mapped step)."""
    kwargs, _, classes = TINY[name]
    return get_model(name, classes, **{"norm": nn.BatchNorm, **kwargs, **overrides})


def normal(seed: int, shape) -> jax.Array:
    """Standard-normal float32 test data drawn by NumPy: ``jax.random`` compiles a program per shape,
    seconds each on the CPU, and the suite draws hundreds of shapes."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape), np.float32))


def tiny(name, seed=0, fraction=0.5, dropped=(0.0, -100.0)):
    """(model, variables, x) of the tiny built-in ``name`` with random BN statistics: in every
    ``masked_bn*`` BN (the paper's units) a random ``fraction`` of channels has (scale, bias) =
    ``dropped`` (default: dead, zero for every input), never all of them; other BNs random and alive."""
    key = (name, seed, fraction, dropped)
    if key not in _CACHE:
        _, shape, _ = TINY[name]
        model = tiny_model(name)
        x = normal(seed + 1, shape)
        # He-normal weights drawn here from the shapes alone: compiling a model's init costs more than its tests
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed), x)
        rng = np.random.default_rng(seed)
        flat = {
            k: (
                rng.normal(0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape) if k[-1] == "kernel" else np.zeros(s.shape)
            ).astype(np.float32)
            for k, s in traverse_util.flatten_dict(dict(shapes)).items()
        }
        for k in sorted(k for k in flat if k[0] == "params" and k[-1] == "scale"):
            n, module = flat[k].shape[0], k[1:-1]
            dead = rng.random(n) < fraction if module[-1].startswith("masked_bn") else np.zeros(n, bool)
            dead[rng.integers(n)] = False
            flat[k] = np.where(dead, dropped[0], rng.uniform(0.5, 1.5, n)).astype(np.float32)
            flat[k[:-1] + ("bias",)] = np.where(dead, dropped[1], rng.uniform(0.1, 1.0, n)).astype(np.float32)
            flat[("batch_stats",) + module + ("mean",)] = rng.normal(0, 0.3, n).astype(np.float32)
            flat[("batch_stats",) + module + ("var",)] = rng.uniform(0.5, 2.0, n).astype(np.float32)
        _CACHE[key] = (model, jax.tree.map(jax.numpy.asarray, traverse_util.unflatten_dict(flat)), x)
    return _CACHE[key]


def assert_close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


def run_child(
    code: str, *, cwd: str, devices: int | None = None, args=(), timeout: float = 600, env: dict | None = None
) -> dict:
    """Runs ``code`` in a fresh CPU-only interpreter (with ``devices`` forced host devices if given, and
    ``env`` added to the environment) and returns the JSON its last ``RESULT `` line prints; fails with
    the child's stderr otherwise. A child that hangs fails through ``timeout``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])
