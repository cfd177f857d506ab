"""MAC budgets: the cost model's MAC accounting against the cut of every architecture, the lambda
controller, landing on a budget, the cost-aware penalty and the config checks (training under a
budget: test_budget_training.py; the cost model through a flatten head, a depthwise conv and read
groups: test_user_budget.py, test_graph_reads.py)."""

import collections
import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soft_prune_jax.compact import interpret as I
from soft_prune_jax.measure import markdown
from soft_prune_jax.models.user import UserModel
from soft_prune_jax.scp import controller as C
from soft_prune_jax.scp import cost as B
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import graph_cost as cost
from soft_prune_jax.traced import macs, masked
from soft_prune_jax.training import config_validation
from soft_prune_jax.training.progress import format_progress

from conftest import tiny, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURES = ("fmnist_cnn", "resnet56", "resnet164", "densenet40", "resnet50")
MASK = M.MaskConfig()


def analysed(name, seed=0, fraction=0.5):
    """(units, cost model, view params, compact-MAC ratio of group keep masks) of the tiny built-in
    ``name`` on the traced path: the ratio is the cut's own (``traced.macs.macs_ratio_fn``)."""
    model, variables, x = tiny(name, seed, fraction)
    user = UserModel(name, "linen", lambda _: model, model, keep_whole=tuple(getattr(model, "keep_whole", ())))
    units = masked.UnitSet.analyze(user, variables, x)
    consts = I.constant_values(units.analysis, jax.tree_util.tree_leaves(dict(variables)))
    ratio = macs.macs_ratio_fn(units.analysis, consts, MASK, 1)
    return units, cost.cost_model(units), jax.jit(units.unit_view)(variables["params"]), ratio


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_cost_model_prices_the_cut_of_every_architecture(name):
    """Dense MACs = the graph's count; under the units' hard masks and under random group masks, the
    cost model's MACs = those of the compact model the cut leaves (keep-one and kept-whole groups included)."""
    units, model, view, ratio = analysed(name)
    assert model.dense_macs == pytest.approx(macs.count(units.analysis).macs)
    assert float(B.macs(model, {g: np.ones(n) for g, n in model.group_sizes})) == pytest.approx(model.dense_macs)
    hard = jax.jit(lambda v: B.hard_keep(v, MASK, model.keep_one, model.units))(view)  # one compile, not many ops
    counted = float(B.macs(model, hard)) / model.dense_macs
    assert counted == pytest.approx(ratio({}), rel=1e-5) and counted < 1.0
    rng = np.random.default_rng(0)
    keep = {g: rng.random(n) < 0.6 for g, n in model.group_sizes}
    for k in keep.values():
        k[rng.integers(len(k))] = True  # an empty group would keep its lowest-z channel instead
    whole = {g: np.ones(n, bool) for g, n in units.whole.items()}
    assert float(B.macs(model, keep)) / model.dense_macs == pytest.approx(ratio({**keep, **whole}), rel=1e-5)


def test_channel_costs_count_producer_and_reader():
    """A chain conv0 -> conv1 -> head: a channel of conv0's group costs MACs in conv0 (as an output)
    and in conv1 (as an input), at the current width of the other axis."""
    cost_model = B.CostModel(
        (
            B.CostLayer("conv0", 8 * 8 * 9, 1, 4, (), (("a", 1),)),
            B.CostLayer("conv1", 4 * 4 * 9, 4, 6, (("a", 1),), (("b", 1),)),
            B.CostLayer("head", 1.0, 6, 10, (("b", 1),), ()),
        ),
        (("a", 4), ("b", 6)),
    )
    assert cost_model.layers[1].in_group == "a" and cost_model.layers[1].out_group == "b"
    per = B.channel_costs(cost_model, {"a": 2.0, "b": 3.0})
    assert float(per["a"]) == pytest.approx(8 * 8 * 9 * 1 + 4 * 4 * 9 * 3)
    assert float(per["b"]) == pytest.approx(4 * 4 * 9 * 2 + 10)
    # Expected MACs are the MACs at the expected widths, and differentiable in pi.
    keep = {"a": jnp.array([1.0, 0.5, 0.5, 0.0]), "b": jnp.full((6,), 0.5)}
    assert float(B.macs(cost_model, keep)) == pytest.approx(8 * 8 * 9 * 2 + 4 * 4 * 9 * 2 * 3 + 3 * 10)
    grad = jax.grad(lambda k: B.macs(cost_model, k))(keep)
    np.testing.assert_allclose(np.asarray(grad["a"]), float(per["a"]), rtol=1e-6)


def test_cost_weights_have_mean_one_and_favour_expensive_channels():
    _, model, view, _ = analysed("fmnist_cnn")
    keep = B.keep_probabilities(view, MASK, model.units)
    weights = B.cost_weights(model, keep)
    sizes = dict(model.group_sizes)
    mean = sum(float(weights[g]) * sizes[g] for g in weights) / sum(sizes.values())
    assert mean == pytest.approx(1.0, rel=1e-5)
    # The first conv runs at full resolution, the last after two pools: its channels cost less.
    assert float(weights["masked_bn0"]) > float(weights["masked_bn2"])
    plain = float(M.sparsity_penalty(view, 2.0))
    weighted = float(B.cost_aware_penalty(view, model, MASK, 2.0))
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
    _, model, view, _ = analysed("fmnist_cnn")
    assert all(u.index == tuple(range(u.group_size)) for u in model.units)  # a chain: unit channel = group channel
    z = {model.group_of(n): np.asarray(M.deactivation_z(v["scale"], v["bias"], MASK.eps)) for n, v in view.items()}
    q = {n: np.asarray(jax.scipy.stats.norm.cdf(v)) for n, v in z.items()}
    at_c = B.early_keep(view, MASK, MASK.c, model.keep_one, model.units)
    hard = B.hard_keep(view, MASK, model.keep_one, model.units)
    for name in hard:  # q < c is exactly pi < 0.5
        np.testing.assert_array_equal(np.asarray(at_c[name]), np.asarray(hard[name]))
    # about half the channels the hard masks keep are "on their way" (the dead ones sit at q = 1)
    threshold = float(np.median(np.concatenate([v[v < MASK.c] for v in q.values()])))
    early = B.early_keep(view, MASK, threshold, model.keep_one, model.units)
    assert set(early) == set(z)
    for name in early:
        expected = (q[name] < threshold).astype(np.float32)
        if not expected.any():  # keep-one groups keep their most alive channel
            expected[np.argmin(z[name])] = 1.0
        np.testing.assert_array_equal(np.asarray(early[name]), expected)
    ratios = B.macs_ratios(model, view, MASK, threshold)
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
    """Landing the units' hard masks with the cut's own MAC count, as ``pipeline.model_path.cut`` does."""
    units, model, view, group_ratio = analysed("fmnist_cnn", seed=2, fraction=0.1)
    masks = {n: np.asarray(p["hard_mask"]) for n, p in M.layer_probabilities(view, MASK).items()}
    z = {n: np.asarray(M.deactivation_z(v["scale"], v["bias"], MASK.eps)) for n, v in view.items()}

    def ratio(m):
        return group_ratio(units.group_keep(m))

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
