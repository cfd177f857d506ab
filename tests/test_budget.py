"""MAC budgets: the cost model's MAC accounting, the lambda controller, landing on a budget, the
cost-aware penalty and the config checks (training under a budget: test_budget_training.py)."""

import collections
import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soft_prune_jax.compact import structure, surgery
from soft_prune_jax.measure import flops, markdown
from soft_prune_jax.method import budget as B
from soft_prune_jax.method import controller as C
from soft_prune_jax.method import masks as M
from soft_prune_jax.pipeline.budget import model_cost
from soft_prune_jax.training import config_validation
from soft_prune_jax.training.progress import format_progress

from conftest import tiny, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURES = ("fmnist_cnn", "resnet56", "resnet164", "densenet40", "resnet50")


def _exact_ratio(model, variables, masks, input_shape):
    """MACs of the compact model surgery builds from ``masks`` (flops.count), over the dense MACs."""
    compact, compact_vars = surgery.prune(model, variables, masks=masks)
    return flops.count(compact, compact_vars, input_shape).macs / flops.count(model, None, input_shape).macs


def _branch_emptied(model, masks):
    """True when a residual block loses a whole mask: surgery then drops the block (more than the count)."""
    keep_one = {g.name for g in structure.describe(model).groups if g.keep_at_least_one}
    return any(name.startswith("block") and not np.any(m > 0) for name, m in masks.items() if name not in keep_one)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_dense_macs_equal_flops_count(name):
    model, _, x = tiny(name)
    cost = model_cost(model, x.shape)
    assert cost.dense_macs == pytest.approx(flops.count(model, None, x.shape).macs)
    full = {g: np.ones(n) for g, n in cost.group_sizes}
    assert float(B.macs(cost, full)) == pytest.approx(cost.dense_macs, rel=1e-6)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_hard_macs_equal_the_compact_models_count(name):
    """The hard-masked MACs of the cost model = flops.count of the compact model, over random masks
    (an upper bound only where a residual branch lost a whole mask; at least one exact case each)."""
    model, variables, x = tiny(name)
    cost = model_cost(model, x.shape)
    exact_cases = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        masks = {g: (rng.random(n) < 0.6).astype(np.float32) for g, n in cost.group_sizes}
        for g in cost.keep_one:  # surgery keeps one channel there; count what it keeps
            if not masks[g].any():
                masks[g][0] = 1.0
        exact = _exact_ratio(model, variables, masks, x.shape)
        counted = float(B.macs(cost, masks)) / cost.dense_macs
        if _branch_emptied(model, masks):
            assert counted >= exact - 1e-6
        else:
            assert counted == pytest.approx(exact, rel=1e-5)
            exact_cases += 1
    assert exact_cases >= 1


def test_hard_keep_matches_the_models_own_masks():
    model, variables, x = tiny("fmnist_cnn")
    variables = surgery.randomize_bn(variables, 5, 0.5)
    cost = model_cost(model, x.shape)
    ours = B.hard_keep(variables["params"], model.mask, cost.keep_one)
    theirs = surgery.model_hard_masks(model, variables["params"])
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_array_equal(np.asarray(ours[name]), theirs[name])
    ratio = float(B.macs_ratios(cost, variables["params"], model.mask)["hard"])
    assert ratio == pytest.approx(_exact_ratio(model, variables, theirs, x.shape), rel=1e-5)


def test_channel_costs_count_producer_and_reader():
    """A chain conv0 -> conv1 -> head: a channel of conv0's group costs MACs in conv0 (as an output)
    and in conv1 (as an input), at the current width of the other axis."""
    Group = structure.MaskGroup
    S = structure.ArraySlice
    Row = flops.LayerCount
    groups = [
        Group("a", (S("params", ("conv0", "kernel"), 3), S("params", ("conv1", "kernel"), 2))),
        Group("b", (S("params", ("conv1", "kernel"), 3), S("params", ("head", "kernel"), 0))),
    ]
    layers = [
        Row("conv0", "conv", 1, 4, (3, 3), (8, 8), 8 * 8 * 9 * 1 * 4, 0),
        Row("conv1", "conv", 4, 6, (3, 3), (4, 4), 4 * 4 * 9 * 4 * 6, 0),
        Row("head", "dense", 6, 10, (), (), 60, 0),
    ]
    cost = B.cost_model(groups, layers)
    assert cost.layers[1].in_group == "a" and cost.layers[1].out_group == "b"
    per = B.channel_costs(cost, {"a": 2.0, "b": 3.0})
    assert float(per["a"]) == pytest.approx(8 * 8 * 9 * 1 + 4 * 4 * 9 * 3)
    assert float(per["b"]) == pytest.approx(4 * 4 * 9 * 2 + 10)
    # Expected MACs are the MACs at the expected widths, and differentiable in pi.
    keep = {"a": jnp.array([1.0, 0.5, 0.5, 0.0]), "b": jnp.full((6,), 0.5)}
    assert float(B.macs(cost, keep)) == pytest.approx(8 * 8 * 9 * 2 + 4 * 4 * 9 * 2 * 3 + 3 * 10)
    grad = jax.grad(lambda k: B.macs(cost, k))(keep)
    np.testing.assert_allclose(np.asarray(grad["a"]), float(per["a"]), rtol=1e-6)


def test_cost_weights_have_mean_one_and_favour_expensive_channels():
    model, variables, x = tiny("fmnist_cnn")
    cost = model_cost(model, x.shape)
    keep = B.keep_probabilities(variables["params"], model.mask)
    weights = B.cost_weights(cost, keep)
    sizes = dict(cost.group_sizes)
    mean = sum(float(weights[g]) * sizes[g] for g in weights) / sum(sizes.values())
    assert mean == pytest.approx(1.0, rel=1e-5)
    # The first conv runs at full resolution, the last after two pools: its channels cost less.
    assert float(weights["masked_bn0"]) > float(weights["masked_bn2"])
    plain = float(M.sparsity_penalty(variables["params"], 2.0))
    weighted = float(B.cost_aware_penalty(variables["params"], cost, model.mask, 2.0))
    assert weighted != pytest.approx(plain)


def test_controller_converges_on_a_toy_plant():
    """A plant whose MAC ratio falls with log lambda, after a lag: the controller settles at the target."""
    config = C.ControllerConfig(target=0.4, kp=1.0, ki=0.05, ramp_steps=100, lambda_min=1e-6, lambda_max=1.0)
    state = C.init_state(config, 1e-4)
    ratio = 1.0
    for step in range(600):
        # the ratio the current lambda would give (0.4 at lambda = 1e-3), approached with a lag
        steady = 1.0 / (1.0 + jnp.exp(jnp.log(state.lam) - jnp.log(1e-3)) * 1.5)
        ratio = ratio + 0.1 * (float(steady) - ratio)
        state = C.update(config, state, ratio, step)
    assert ratio == pytest.approx(0.4, abs=0.01)
    assert float(state.lam) == pytest.approx(1e-3, rel=0.1)


def _one_way_lagging_plant(config, steps=600, lag=60):
    """Channels die a while after lambda rises (a delay line) and never come back (the ratio only falls)."""
    state = C.init_state(config, 1e-4)
    ratio, pending = 1.0, collections.deque([1.0] * lag)
    for step in range(steps):
        pending.append(float(1.0 / (1.0 + jnp.exp(jnp.log(state.lam) - jnp.log(1e-3)) * 1.5)))
        ratio = min(ratio, ratio + 0.1 * (pending.popleft() - ratio))
        state = C.update(config, state, ratio, step)
    return ratio


def test_aiming_above_the_budget_keeps_a_lagging_one_way_plant_above_it():
    """Aimed at the budget itself, channels still dying after lambda falls carry the ratio below it (cut
    for nothing); aimed above it, the ratio ends between the budget and the aim, where landing can trim."""
    config = C.ControllerConfig(target=0.4, kp=2.0, ki=0.05, undershoot_boost=4.0, ramp_steps=50)
    assert _one_way_lagging_plant(config) < 0.39
    aimed = dataclasses.replace(config, aim_above=0.1)
    assert aimed.aim == pytest.approx(0.46)
    assert float(C.scheduled_target(aimed, 10**6)) == pytest.approx(0.46)
    assert 0.4 <= _one_way_lagging_plant(aimed) <= 0.46
    with pytest.raises(ValueError, match=r"aim_above=1\.0 is invalid"):
        dataclasses.replace(config, aim_above=1.0)


def test_controller_clips_lambda_and_winds_up_no_further():
    config = C.ControllerConfig(target=0.5, kp=0.0, ki=1.0, lambda_min=1e-4, lambda_max=1e-2)
    state = C.init_state(config, 1.0)  # out of range: clipped
    assert float(state.lam) == pytest.approx(1e-2, rel=1e-5)
    for step in range(50):
        state = C.update(config, state, 1.0, step)
    assert float(state.lam) == pytest.approx(1e-2, rel=1e-5)
    state = C.update(config, state, 0.0, 50)  # one step below target leaves the ceiling at once
    assert float(state.lam) < 1e-2
    assert float(C.scheduled_target(dataclasses.replace(config, ramp_steps=10), 5)) == pytest.approx(0.75)


def test_early_keep_drops_channels_on_their_way_out_before_the_hard_mask():
    model, variables, x = tiny("fmnist_cnn")
    params = variables["params"]
    cost = model_cost(model, x.shape)
    z = {
        n: np.asarray(M.deactivation_z(v["scale"], v["bias"], model.mask.eps))
        for n, v in M.masked_layers(params).items()
    }
    q = {n: np.asarray(jax.scipy.stats.norm.cdf(v)) for n, v in z.items()}
    at_c = B.early_keep(params, model.mask, model.mask.c, cost.keep_one)
    hard = B.hard_keep(params, model.mask, cost.keep_one)
    for name in hard:  # q < c is exactly pi < 0.5
        np.testing.assert_array_equal(np.asarray(at_c[name]), np.asarray(hard[name]))
    threshold = float(np.median(np.concatenate(list(q.values()))))  # about half the channels are "on their way"
    early = B.early_keep(params, model.mask, threshold, cost.keep_one)
    for name in early:
        expected = (q[name] < threshold).astype(np.float32)
        if not expected.any():  # keep-one units keep their most alive channel
            expected[np.argmin(z[name])] = 1.0
        np.testing.assert_array_equal(np.asarray(early[name]), expected)
    ratios = B.macs_ratios(cost, params, model.mask, threshold)
    assert float(ratios["early"]) < float(ratios["hard"])


def test_controller_update_is_jittable_and_pytree():
    config = C.ControllerConfig(target=0.3)
    state = C.init_state(config, 1e-3)
    jitted = jax.jit(lambda s, r, t: C.update(config, s, r, t))
    new = jitted(state, 0.9, 3)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
    assert float(new.lam) > 1e-3


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_land_on_budget_hits_the_target_with_the_least_alive_channels(target):
    model, variables, x = tiny("fmnist_cnn")
    variables = surgery.randomize_bn(variables, 2, 0.1)
    cost = model_cost(model, x.shape)
    params = variables["params"]
    masks = {k: np.asarray(v) for k, v in B.hard_keep(params, model.mask, cost.keep_one).items()}
    z = {
        n: np.asarray(M.deactivation_z(layer["scale"], layer["bias"], model.mask.eps))
        for n, layer in M.masked_layers(params).items()
    }

    def ratio(m):
        return _exact_ratio(model, variables, m, x.shape)

    assert ratio(masks) > target
    landed, removed = B.land_on_budget(masks, z, ratio, target)
    assert removed > 0 and ratio(landed) <= target
    # the fewest removals: putting back the last one removed overshoots again
    gone = [(z[n][i], n, i) for n in masks for i in np.flatnonzero((masks[n] > 0) & (landed[n] == 0))]
    assert len(gone) == removed
    _, n, i = min(gone)
    back = {k: v.copy() for k, v in landed.items()}
    back[n][i] = 1.0
    assert ratio(back) > target
    # every removed channel is less alive (higher z) than every kept one
    kept_z = np.concatenate([z[n][landed[n] > 0] for n in landed])
    assert min(g[0] for g in gone) >= kept_z.max() - 1e-6
    # already within budget: unchanged
    same, zero = B.land_on_budget(landed, z, ratio, target)
    assert zero == 0 and all(np.array_equal(same[k], landed[k]) for k in landed)


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.0, 1.5, float("nan"), float("inf")])
def test_bad_targets_are_one_line_errors(bad):
    config = tiny_config(target_macs_ratio=bad)
    with pytest.raises(ValueError, match=r"config\.target_macs_ratio=.* is invalid: expected a number in \(0") as e:
        config_validation.validate(config, num_devices=1)
    assert "\n" not in str(e.value)


def test_a_target_that_is_not_a_number_is_refused_before_training(tmp_path):
    """On the command line: the flag parser refuses it in one line; nothing is written."""
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "launch/train.py",
            "--config=configs/fashion_mnist.py",
            "--config.target_macs_ratio=abc",
            f"--workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "target_macs_ratio" in line]
    assert len(errors) == 1 and "could not convert string to float: 'abc'" in errors[0]
    assert not workdir.exists()
    with pytest.raises(TypeError):  # in Python the typed placeholder refuses it as well
        tiny_config().target_macs_ratio = "abc"


def test_budget_options_need_scp():
    for field, value in (("target_macs_ratio", 0.5), ("cost_aware_penalty", True)):
        with pytest.raises(ValueError, match=rf"config\.{field}=.* needs config\.method='scp'"):
            config_validation.validate(tiny_config(method="dense", **{field: value}), num_devices=1)
    config_validation.validate(tiny_config(target_macs_ratio=0.5, cost_aware_penalty=True), num_devices=1)
    bad = tiny_config()
    bad.budget_controller.lambda_max = bad.budget_controller.lambda_min / 2
    with pytest.raises(ValueError, match=r"config\.budget_controller\.lambda_max="):
        config_validation.validate(bad, num_devices=1)


def test_progress_line_and_report_show_lambda_and_target_vs_reached():
    metrics = {
        "loss": 1.0,
        "cross_entropy": 0.9,
        "accuracy": 0.5,
        "learning_rate": 0.1,
        "lambda": 2.5e-3,
        "macs_expected_ratio": 0.52,
        "macs_hard_ratio": 0.41,
        "macs_target_ratio": 0.35,
    }
    metrics["macs_signal_ratio"] = 0.37
    line = format_progress("train", 10, 100, 1.0, metrics, None, None)
    assert line.endswith("| lambda 0.0025 | MACs expected 52.0% hard-masked 41.0% early 37.0% (target now 35.0%)")
    assert "lambda" not in format_progress(
        "train", 10, 100, 1.0, {k: metrics[k] for k in list(metrics)[:4]}, None, None
    )
    summary = {
        "dense_macs": 100,
        "compact_macs": 35,
        "macs_reduction_pct": 65.0,
        "dense_params": 10,
        "compact_params": 5,
        "params_reduction_pct": 50.0,
        "total_channels": 8,
        "kept_channels": 4,
        "channel_reduction_pct": 50.0,
    }
    budget = {
        "target_macs_ratio": 0.35,
        "hard_masked_macs_ratio": 0.372,
        "reached_macs_ratio": 0.349,
        "removed_by_landing": 3,
    }
    out = {
        "model": "m",
        "dataset": "d",
        "method": "scp",
        "pruning": {"summary": summary},
        "macs_convention": "MACs",
        "prune": {"budget": budget},
    }
    page = markdown.render(out, "table", None)
    assert (
        "| MAC budget (of dense MACs) | target 35.0%, trained hard-masked 37.2%, reached 34.9% "
        "(3 channels removed by landing) |"
    ) in page
