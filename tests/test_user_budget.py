"""A MAC budget and the cost-aware penalty on a user's own model (``config.model = "module:attr"``).

The cost model read off the graph (soft_prune_jax/traced/graph_cost.py) counts the dense MACs of the graph
and, under any masks, the MACs of the compact model ``prune_model`` cuts with them -- through a
flatten head, a depthwise conv between two units of one group, and DenseNet's concatenations (a
run that lands on a budget: test_budget_training.py, the same traced path); the controller and the
weights are the same under pmap, shard_map and one device; bad targets are one line.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo_linen
from graph_support import random_linen_variables

from soft_prune_jax import prune_model
from soft_prune_jax.measure import flops
from soft_prune_jax.models.user import UserModel
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import graph_cost as cost
from soft_prune_jax.traced import macs, masked
from soft_prune_jax.training import config_validation

from conftest import run_child, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


class SyncBNNet(nn.Module):
    """Flax-ImageNet-style BN (axis_name='batch') and a flatten head: each of the 8 channels of the
    last unit is read 16 times by the classifier. Named by configs as ``test_user_budget:SyncBNNet``."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for width, stride in ((6, 1), (8, 2)):
            x = nn.Conv(width, (3, 3), strides=stride, use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name="batch")(x))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def user_config(spec: str, **overrides):
    fields = dict(model=spec, num_classes=10, num_epochs=2, lr_boundaries=(), num_train_examples=128)
    config = tiny_config(**{**fields, **overrides})
    config.model_kwargs = {}
    return config


# ---- the cost model against the graph's own MAC count ------------------------------------------

# flatten -> dense head (each channel 9 times); a depthwise conv between two units of one group;
# every layer reading its own selection of a concatenation
ZOO = ("chain", "depthwise_separable", "densenet")


@functools.cache
def _zoo(name: str, seed: int):
    ctor, shape = zoo_linen.ZOO[name]
    module, x = ctor(), jnp.zeros(shape)
    variables = random_linen_variables(module, x, seed=seed, fraction=0.5, train=False)
    units = masked.UnitSet.analyze(UserModel(name, "linen", lambda _: module, module), variables, x)
    return module, variables, x, units


def _compact_macs(module, variables, x, keep=None) -> int:
    compact, compact_vars = prune_model(module, variables, x, keep=keep, train=False)
    return flops.model_macs(compact, compact_vars, x, train=False)


@pytest.mark.parametrize("name", ZOO)
def test_cost_model_counts_the_dense_and_the_compact_macs(name):
    rng = np.random.default_rng(0)
    module, variables, x, units = _zoo(name, 0)  # half of every unit's channels dead (bias -10)
    model = cost.cost_model(units)
    dense = macs.count(units.analysis).macs
    assert model.dense_macs == dense == flops.model_macs(module, variables, x, train=False)
    # the units' own hard masks (a group's channel stays if any of its units keeps it; keep-one)
    hard = B.hard_keep(units.unit_view(variables["params"]), M.MaskConfig(), model.keep_one, model.units)
    assert 0 < float(B.macs(model, hard)) == _compact_macs(module, variables, x) < dense
    # random group masks, given to prune_model as keep=
    keep = {g: rng.random(n) < 0.5 for g, n in model.group_sizes}
    for k in keep.values():
        k[rng.integers(len(k))] = True  # an empty group would keep its lowest-z channel instead
    assert float(B.macs(model, keep)) == _compact_macs(module, variables, x, keep=keep)
    assert len(model.units) > len(model.group_sizes) or name != "depthwise_separable"  # two units in a group


def test_a_group_channel_goes_only_when_every_unit_drops_it():
    units = (B.UnitChannels("a", "g", 3, (0, 1, 2)), B.UnitChannels("b", "g", 3, (2, 1, 0)))
    probs = B.group_keep(units, {"a": jnp.array([0.5, 0.0, 1.0]), "b": jnp.array([0.0, 0.5, 0.2])})
    np.testing.assert_allclose(probs["g"], [1 - 0.5 * 0.8, 1 - 1.0 * 0.5, 1.0], rtol=1e-6)
    hard = B.group_keep(units, {"a": jnp.array([0.0, 0.0, 1.0]), "b": jnp.array([0.0, 0.0, 0.0])})
    np.testing.assert_array_equal(hard["g"], [0.0, 0.0, 1.0])
    z = B.group_z(units, {"a": jnp.array([3.0, 1.0, 5.0]), "b": jnp.array([4.0, 2.0, 0.5])})
    np.testing.assert_array_equal(z["g"], [0.5, 1.0, 4.0])


def test_cost_aware_weights_follow_the_graph():
    """The cost-aware penalty on a user model weighs a unit by what its channel costs where it is
    produced and where it is read, flatten head included. zoo_linen.Chain on 6x6x3 (SAME 3x3 convs,
    2x2 pool, flatten of 3x3x8 into 5 classes), at full width, by hand:
    BatchNorm_0: conv0 out 36*9*3 + conv1 in 36*9*8; BatchNorm_1: conv1 out 36*9*6 + head in 9*5."""
    _, variables, _, units = _zoo("chain", 0)
    model = cost.cost_model(units)
    weights = B.cost_weights(model, {g: jnp.ones(n) for g, n in model.group_sizes})
    by_hand = (36 * 9 * 6 + 9 * 5) / (36 * 9 * 3 + 36 * 9 * 8)
    assert float(weights["BatchNorm_1"] / weights["BatchNorm_0"]) == pytest.approx(by_hand, rel=1e-6)
    mask = M.MaskConfig()
    grad = jax.grad(lambda p: B.cost_aware_penalty(units.unit_view(p), model, mask))(variables["params"])
    view = units.unit_view(variables["params"])
    assert float(B.cost_aware_penalty(view, model, mask)) != pytest.approx(float(M.sparsity_penalty(view)))
    assert all(float(jnp.abs(grad[bn]["bias"]).sum()) > 0 for bn in ("BatchNorm_0", "BatchNorm_1"))


# ---- pmap / shard_map -----------------------------------------------------------------------------

DEVICES_CHILD = r"""
import functools, json, sys
import jax, numpy as np
sys.path[:0] = [TESTS_DIR, REPO]
from conftest import SyntheticData, tiny_config
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.training.parallel import Parallel
from soft_prune_jax.training.state import create_learning_rate_fn, create_optimizer, create_train_state, init_variables
from soft_prune_jax.training.steps import train_step

config = tiny_config(model="test_user_budget:SyncBNNet", num_classes=10, sparsity_lambda=0.1, target_macs_ratio=0.5,
                     cost_aware_penalty=True)
config.model_kwargs = {}
phase = model_path.training_phase(config, (8, 8, 1))
budget = phase.budget.bind(10)
data = SyntheticData()
variables = init_variables(phase.model, jax.random.PRNGKey(0), data.shape)
lr_fn = create_learning_rate_fn(0.1, (), 0.1, 16)
tx = create_optimizer(config, lr_fn, variables["params"])
state0 = create_train_state(jax.random.PRNGKey(1), variables, tx, budget.init_state())
batches = [next(data.train_iterator(config, local_devices=1, seed=s)) for s in range(2)]

def run(kind, devices):
    parallel = Parallel(kind, devices)
    step = parallel.map(functools.partial(train_step, model=phase.model, tx=tx, learning_rate_fn=lr_fn,
                                          regulariser=phase.regulariser, budget=budget))
    state, n = parallel.replicate(state0), len(devices)
    for b in batches:
        state, metrics = step(state, parallel.shard_batch({k: v.reshape((n, -1) + v.shape[2:]) for k, v in b.items()}))
    state = parallel.unreplicate(state)
    return {"log_lambda": float(state.controller.log_lambda),
            "leaves": [np.asarray(x).ravel().tolist() for x in jax.tree_util.tree_leaves(
                (state.controller, state.params, state.batch_stats))]}

devices = jax.local_devices()
print("RESULT " + json.dumps({"devices": len(devices), "start": float(state0.controller.log_lambda),
                              "single": run("pmap", devices[:1]), "pmap": run("pmap", devices),
                              "shard_map": run("shard_map", devices)}))
"""


@pytest.mark.slow
def test_controller_and_weights_agree_on_two_devices_and_one():
    child = DEVICES_CHILD.replace("TESTS_DIR", repr(TESTS)).replace("REPO", repr(REPO))
    result = run_child(child, cwd=REPO, devices=2)
    assert result["devices"] == 2
    single = result["single"]
    assert single["log_lambda"] != pytest.approx(result["start"])  # the controller moved
    for kind in ("pmap", "shard_map"):
        assert len(result[kind]["leaves"]) == len(single["leaves"])
        for a, b in zip(result[kind]["leaves"], single["leaves"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=kind)


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 1.0, -0.5, float("nan")])
def test_bad_target_on_a_user_model_is_one_line(target):
    """(A target that is not a number is refused by the typed config field itself, for every model.)"""
    config = user_config("test_user_budget:SyncBNNet", target_macs_ratio=target)
    with pytest.raises(ValueError) as info:
        config_validation.validate(config, num_devices=1)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"config.target_macs_ratio={target!r} is invalid"), message


def test_target_on_a_model_with_nothing_to_prune_is_one_line():
    config = user_config("user_zoo:NoUnits", target_macs_ratio=0.5)
    config_validation.validate(config, num_devices=1)  # the model itself is fine
    with pytest.raises(ValueError) as info:
        model_path.training_phase(config, (8, 8, 1))
    message = str(info.value)
    assert "\n" not in message and "config.target_macs_ratio=0.5 cannot be reached" in message, message
    assert "user_zoo:NoUnits" in message
