"""``prune_model(..., target_latency_ratio=)`` (soft_prune_jax/traced/prune_to_latency.py).

A fake device makes the landing deterministic: a layer costs kh * kw * in * out (times two where a width
is not a multiple of 4), the dense model the sum of its layers, and a compact model is *measured* 20%
slower than that, so that the first landing misses and the second must aim lower. One test times for
real on a tiny model and checks only what timing noise cannot change.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from zoo_nnx import CNN

from soft_prune_jax import prune_model
from soft_prune_jax.compact import layer_timings as CL
from soft_prune_jax.compact.prune_model import PruneError, masked_reference
from soft_prune_jax.traced import latency_landing

from conftest import assert_close, normal, tiny

SLOWER = 1.2  # compact models measure this much above their estimate on the fake device


def fake_layer_ms(op, n_in, n_out, batch, dtype) -> float:
    odd = 2.0 if n_in % 4 or n_out % 4 else 1.0
    return 1e-3 * op.kernel[0] * op.kernel[1] * n_in * n_out * odd


def fake_model_ms(variables) -> float:
    """The fake device's latency of a network: its conv and dense kernels' costs summed (the 4-d and
    2-d leaves: a compact NNX module holds its arrays in a list, without their names)."""
    total = 0.0
    for leaf in jax.tree_util.tree_leaves(variables):
        shape = np.shape(leaf)
        if len(shape) in (2, 4):
            kh, kw = shape[:2] if len(shape) == 4 else (1, 1)
            n_in, n_out = shape[-2], shape[-1]
            total += fake_layer_ms(type("Op", (), {"kernel": (kh, kw)}), n_in, n_out, 0, "")
    return total


@pytest.fixture
def fake_device(monkeypatch, tmp_path):
    monkeypatch.setattr(latency_landing, "dense_ms", lambda apply, variables, *a, **k: fake_model_ms(variables))

    def measure_pair(dense_apply, dense_vars, compact_apply, compact_vars, input_shape, batch):
        return fake_model_ms(dense_vars), SLOWER * fake_model_ms(compact_vars)

    monkeypatch.setattr(latency_landing, "measure_pair", measure_pair)
    return CL.Timings(str(tmp_path / "timings.json"), fake_layer_ms, device="fake device")


def _z(variables, group):
    bn = variables["params"][group]
    return np.asarray((0.05 - bn["bias"]) / np.abs(bn["scale"]))


def test_a_latency_target_lands_after_measuring_and_the_cut_stays_exact(fake_device):
    model, variables, x = tiny("fmnist_cnn", seed=3, fraction=0.25)
    compact, compact_vars = prune_model(
        model, variables, x, target_latency_ratio=0.5, timings=fake_device, latency_batch=4, train=False
    )
    record = compact.budget
    assert record["target_latency_ratio"] == 0.5 and record["criterion"] == "scp"
    assert len(record["landing_tries"]) >= 2  # the first cut measured 20% above its estimate
    assert record["landing_tries"][1]["aim"] < record["landing_tries"][0]["aim"]
    assert record["measured_latency_ratio"] <= 0.5 + 1e-9
    assert record["measured_latency_ratio"] == pytest.approx(
        SLOWER * fake_model_ms(compact_vars) / fake_model_ms(variables)
    )
    assert_close(compact.apply(compact_vars, x, train=False), masked_reference(compact, variables, x, train=False))
    for name, plan in compact.program.plans.items():
        if plan.prunable and len(plan.kept) < plan.total:  # SCP's order: every kept channel more alive than the dropped
            z = _z(variables, name)
            dropped = np.setdiff1d(np.arange(plan.total), plan.kept)
            assert z[plan.kept].max() <= z[dropped].min()


def test_magnitude_keeps_the_largest_gammas(fake_device):
    model, variables, x = tiny("fmnist_cnn", seed=4, fraction=0.0)  # no channel dead: SCP's masks drop nothing
    compact, compact_vars = prune_model(
        model,
        variables,
        x,
        target_latency_ratio=0.4,
        criterion="magnitude",
        timings=fake_device,
        latency_batch=4,
        train=False,
    )
    assert compact.budget["criterion"] == "magnitude" and compact.budget["measured_latency_ratio"] <= 0.4 + 1e-9
    cut = [(n, p) for n, p in compact.program.plans.items() if p.prunable and len(p.kept) < p.total]
    assert cut, "a 0.4 budget must cut some group"
    for name, plan in cut:
        gamma = np.abs(np.asarray(variables["params"][name]["scale"]))
        dropped = np.setdiff1d(np.arange(plan.total), plan.kept)
        assert gamma[plan.kept].min() >= gamma[dropped].max()


def test_an_nnx_module_takes_a_latency_target(fake_device):
    module = CNN(nnx.Rngs(0))
    x = normal(1, (2, 6, 6, 3))
    compact = prune_model(
        module, x, target_latency_ratio=0.6, criterion="magnitude", timings=fake_device, latency_batch=4
    )
    assert 0 < compact.budget["measured_latency_ratio"] <= 0.6 + 1e-9  # the compact module was measured
    assert compact(x).shape == (2, 5)


def test_round_to_latency_without_a_target_pads_to_the_fastest_width(fake_device):
    model, variables, x = tiny("fmnist_cnn", seed=5, fraction=0.4)
    plain, _ = prune_model(model, variables, x, train=False)
    padded, padded_vars = prune_model(model, variables, x, round_to="latency", timings=fake_device, train=False)
    for name, plan in padded.program.plans.items():
        before = len(plain.program.plans[name].kept)
        assert len(plan.kept) >= before
        if plan.prunable and len(plan.kept) != before:  # padded only to a width the fake device runs faster
            assert len(plan.kept) % 4 == 0
    assert_close(padded.apply(padded_vars, x, train=False), masked_reference(padded, variables, x, train=False))


def test_real_timing_on_this_machine_returns_a_measured_record(tmp_path):
    # Real timings of a tiny model are mostly call overhead and move with the machine's load, so only
    # what they cannot change is checked: the record, the device, the hard masks' cut and exactness.
    model, variables, x = tiny("fmnist_cnn", seed=6, fraction=0.5)
    timings = CL.Timings(str(tmp_path / "timings.json"))
    compact, compact_vars = prune_model(
        model, variables, x, target_latency_ratio=1.0, timings=timings, latency_batch=16, train=False
    )
    record = compact.budget
    assert record["dense_ms"] > 0 and record["compact_ms"] > 0
    assert 1 <= len(record["landing_tries"]) <= latency_landing.LANDING_TRIES
    assert record["device"] == CL.device_key() and record["batch_size"] == 16
    assert any(len(p.kept) < p.total for p in compact.program.plans.values() if p.prunable)
    assert_close(compact.apply(compact_vars, x, train=False), masked_reference(compact, variables, x, train=False))


def test_an_estimate_that_cannot_tell_widths_apart_refuses_nothing(fake_device, monkeypatch):
    model, variables, x = tiny("fmnist_cnn", seed=7, fraction=0.25)
    # a dense model timed faster than its layers' sum: the floor estimate lands above the dense latency
    monkeypatch.setattr(latency_landing, "dense_ms", lambda apply, variables, *a, **k: 1e-3)
    compact, _ = prune_model(model, variables, x, target_latency_ratio=0.5, timings=fake_device, train=False)
    assert compact.budget["target_latency_ratio"] == 0.5 and compact.budget["landing_tries"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_latency_ratio=0.5, target_latency_ms=1.0), "expected one latency target, not both"),
        (dict(target_latency_ratio=0.0), r"target_latency_ratio=0.0 is invalid: expected a fraction in \(0, 1\]"),
        (dict(target_latency_ratio=1.5), r"target_latency_ratio=1.5 is invalid"),
        (dict(target_latency_ms=-2.0), "target_latency_ms=-2.0 is invalid: expected milliseconds > 0"),
        (dict(target_latency_ratio=0.5, criterion="l1"), "criterion='l1' is invalid: expected one of scp, magnitude"),
        (dict(target_latency_ratio=0.5, keep={"masked_bn0": [0]}), "keep= with a latency target"),
        (dict(round_to="fast"), "round_to='fast' is invalid"),
        (dict(target_latency_ratio=0.5, latency_batch=0), "latency_batch=0 is invalid"),
        (dict(target_latency_ratio=0.001), "cannot be reached on fake device: .* expected at least"),
    ],
)
def test_bad_latency_arguments_fail_in_one_line(fake_device, kwargs, message):
    model, variables, x = tiny("fmnist_cnn")
    with pytest.raises(PruneError, match=message) as info:
        prune_model(model, variables, x, timings=fake_device, train=False, **{"latency_batch": 4, **kwargs})
    assert "\n" not in str(info.value)


def test_two_inputs_with_a_latency_target_fail_clearly(fake_device):
    model, variables, x = tiny("fmnist_cnn")
    with pytest.raises(PruneError, match="one image input, got 3 positional arguments"):
        prune_model(model, variables, x, jnp.zeros(1), target_latency_ratio=0.5, timings=fake_device)
