"""pmap over 8 devices, shard_map over 8 devices and one device with the same global batch agree.

The 8 CPU devices exist only in a subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=8);
this pytest process keeps its single device. The child prints a JSON summary; the asserts are here.
"""

from __future__ import annotations

import os

import pytest

from conftest import run_child

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)

CHILD = r"""
import functools, json, sys
import jax, numpy as np
sys.path.insert(0, TESTS_DIR)
from conftest import SyntheticData, tiny_config
from soft_prune_jax.pipeline.model_path import training_phase
from soft_prune_jax.training.loop import fit
from soft_prune_jax.training.parallel import Parallel, check_global_batch
from soft_prune_jax.training.state import create_learning_rate_fn, create_optimizer, create_train_state, init_variables
from soft_prune_jax.training.steps import AXIS, train_step

STEPS = 3
config = tiny_config(batch_size=16, sparsity_lambda=1e-2)  # a large lambda: the masks matter
data = SyntheticData()
phase = training_phase(config, data.shape)
variables = init_variables(phase.model, jax.random.PRNGKey(0), data.shape)
lr_fn = create_learning_rate_fn(0.1, (), 0.1, 16)
tx = create_optimizer(config, lr_fn, variables["params"])
state0 = create_train_state(jax.random.PRNGKey(1), variables, tx)
host_batches = [next(data.train_iterator(config, local_devices=1, seed=s)) for s in range(STEPS)]

def run(kind, devices):
    parallel = Parallel(kind, devices)
    step = parallel.map(functools.partial(train_step, model=phase.model.clone(axis_name=AXIS), tx=tx,
                                          learning_rate_fn=lr_fn, regulariser=phase.regulariser))
    state = parallel.replicate(state0)
    n = len(devices)
    for b in host_batches:  # the same global batch, split over n devices
        b = {k: v.reshape((n, -1) + v.shape[2:]) for k, v in b.items()}
        state, metrics = step(state, parallel.shard_batch(b))
    return parallel.unreplicate(state), parallel.unreplicate(metrics)

def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

devices = jax.local_devices()
single, single_m = run("pmap", devices[:1])
pmapped, pmap_m = run("pmap", devices)
sharded, shard_m = run("shard_map", devices)
errors = {}
try:
    check_global_batch(12, len(devices))
except ValueError as e:
    errors["check"] = str(e)
try:
    fit(tiny_config(batch_size=12), "/nonexistent-never-created", phase, dataset=data)
except ValueError as e:
    errors["fit"] = str(e)
try:
    Parallel("shard_map", devices).shard_batch({"image": np.zeros((4, 2, 8, 8, 1))})
except ValueError as e:
    errors["layout"] = str(e)
print("RESULT " + json.dumps({
    "devices": len(devices),
    "update": max_diff(single.params, state0.params),
    "pmap_vs_single": max_diff(pmapped.params, single.params),
    "shard_map_vs_single": max_diff(sharded.params, single.params),
    "pmap_vs_shard_map": max_diff(pmapped.params, sharded.params),
    "batch_stats_pmap_vs_single": max_diff(pmapped.batch_stats, single.batch_stats),
    "batch_stats_shard_map_vs_single": max_diff(sharded.batch_stats, single.batch_stats),
    "loss": [float(single_m["loss"]), float(pmap_m["loss"]), float(shard_m["loss"])],
    "errors": errors,
}))
"""


@pytest.fixture(scope="module")
def child_result():
    return run_child(CHILD.replace("TESTS_DIR", repr(TESTS_DIR)), cwd=REPO, devices=8, timeout=300)


def test_child_sees_eight_devices_and_trains(child_result):
    assert child_result["devices"] == 8
    assert child_result["update"] > 1e-3  # the steps moved the parameters


@pytest.mark.parametrize(
    "key",
    [
        "pmap_vs_single",
        "shard_map_vs_single",
        "pmap_vs_shard_map",
        "batch_stats_pmap_vs_single",
        "batch_stats_shard_map_vs_single",
    ],
)
def test_same_parameters_on_one_and_eight_devices(child_result, key):
    assert child_result[key] < 1e-5, child_result


def test_same_loss_on_one_and_eight_devices(child_result):
    single, pmapped, sharded = child_result["loss"]
    assert abs(single - pmapped) < 1e-5 and abs(single - sharded) < 1e-5


def test_global_batch_not_divisible_by_devices_is_a_clear_error(child_result):
    errors = child_result["errors"]
    assert errors["check"] == "batch_size=12 is not divisible by the 8 devices: expected a multiple of 8"
    assert errors["fit"] == errors["check"]
    assert "does not match the 8 local devices" in errors["layout"]
