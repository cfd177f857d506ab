"""The SCP mask math (masks.py) against independent float64 computations (docs/method.md, "Equations")."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from soft_prune_jax.scp import masks as M


def q_reference(scale, bias, eps=0.05):
    """docs/method.md's formula in float64 with math.erf: 0.5 (1 + erf((eps - b) / (sqrt2 (|s| + 1e-8))))."""
    return 0.5 * (1.0 + math.erf((eps - bias) / (math.sqrt(2.0) * (abs(scale) + 1e-8))))


def pi_reference(q, k=20.0, c=0.95):
    return 1.0 / (1.0 + math.exp(-k * (q - c)))


# ----------------------------------------------------------------------------------------------
# deactivation probability q
# ----------------------------------------------------------------------------------------------


def test_q_matches_erf_formula():
    cases = [
        (1.0, 0.0),
        (0.3, 0.2),
        (2.0, -1.5),
        (0.05, 0.05),
        (1.0, 0.05 - 1.6448536),
        (0.7, 3.0),
        (-1.0, 0.0),
        (-0.3, 0.2),
        (-2.0, -1.5),
    ]  # negative scale: only |scale| matters
    scale, bias = (jnp.array(v, jnp.float32) for v in zip(*cases))
    got = np.asarray(M.deactivation_probability(scale, bias))
    np.testing.assert_allclose(got, [q_reference(s, b) for s, b in cases], atol=2e-6)


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.3])
def test_q_uses_eps(eps):
    got = float(M.deactivation_probability(jnp.float32(0.5), jnp.float32(0.1), eps))
    assert got == pytest.approx(stats.norm.cdf((eps - 0.1) / 0.5), abs=2e-6)


def test_q_negative_scale_equals_positive_scale():
    scale = jnp.array([0.1, 0.5, 3.0], jnp.float32)
    bias = jnp.array([-0.3, 0.4, 1.0], jnp.float32)
    np.testing.assert_array_equal(M.deactivation_probability(-scale, bias), M.deactivation_probability(scale, bias))


def test_q_at_zero_scale_is_a_step_never_nan():
    bias = jnp.array([-1.0, 0.0, 0.049, 0.05, 0.051, 1.0], jnp.float32)
    q = np.asarray(M.deactivation_probability(jnp.zeros_like(bias), bias, eps=0.05))
    assert np.all(np.isfinite(q))
    # bias < eps: the ReLU output is bias < eps always (q = 1); bias > eps: never (q = 0).
    np.testing.assert_array_equal(q, [1.0, 1.0, 1.0, 0.5, 0.0, 0.0])


def test_q_gradients_are_finite_at_zero_scale():
    bias = jnp.array([-1.0, 0.05, 1.0], jnp.float32)
    g_scale, g_bias = jax.grad(lambda s, b: jnp.sum(M.deactivation_probability(s, b)), argnums=(0, 1))(
        jnp.zeros(3), bias
    )
    assert np.all(np.isfinite(g_scale)) and np.all(np.isfinite(g_bias))


def test_q_huge_bias_saturates_without_nan():
    bias = jnp.array([-1e30, -1e6, 1e6, 1e30], jnp.float32)
    for scale in (0.0, 1e-3, 1.0, 1e3):
        q = np.asarray(M.deactivation_probability(jnp.full_like(bias, scale), bias))
        np.testing.assert_array_equal(q, [1.0, 1.0, 0.0, 0.0])


def test_q_is_accurate_in_the_lower_tail():
    # z = -10 and -5: a 1 - Phi formulation would round to 0 in float32; the erfc-based cdf keeps
    # the relative accuracy, so tiny deactivation probabilities are still ordered correctly.
    for z in (-5.0, -10.0):
        q = float(M.deactivation_probability(jnp.float32(1.0), jnp.float32(0.05 - z)))
        assert q == pytest.approx(stats.norm.cdf(z), rel=1e-3)


@settings(max_examples=40, deadline=None)
@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(1e-3, 5))
def test_q_in_unit_interval_and_decreasing_in_bias(bias, step, scale):
    b = jnp.array([bias, bias + abs(step)], jnp.float32)
    q = np.asarray(M.deactivation_probability(jnp.full_like(b, scale), b))
    assert np.all((q >= 0) & (q <= 1))
    assert q[1] <= q[0]


# ----------------------------------------------------------------------------------------------
# prune probability pi and hard masks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 0.3, 0.9, 0.95, 0.97, 1.0])
@pytest.mark.parametrize("k,c", [(20.0, 0.95), (5.0, 0.8)])
def test_prune_probability_matches_logistic(q, k, c):
    assert float(M.prune_probability(jnp.float32(q), k, c)) == pytest.approx(pi_reference(q, k, c), rel=1e-5, abs=1e-9)


def test_prune_probability_is_capped_by_k_delta():
    # q <= 1, so pi <= sigmoid(k * delta): with the paper's k = 20, delta = 0.05 a fully dead
    # channel has pi = sigmoid(1) = 0.731 and is still sampled "keep" 27% of the time in training.
    pi_max = float(M.prune_probability(jnp.float32(1.0), 20.0, 0.95))
    assert pi_max == pytest.approx(1.0 / (1.0 + math.exp(-1.0)), rel=1e-6)


def test_hard_mask_boundary_at_one_half():
    pi = jnp.array([0.0, 0.2, 0.4999, 0.5, 0.5001, 1.0], jnp.float32)
    mask = M.hard_mask(pi)
    assert mask.dtype == jnp.float32
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0])


def test_hard_mask_prunes_exactly_when_q_reaches_c():
    cfg = M.MaskConfig()
    q = jnp.array([cfg.c - 1e-3, cfg.c, cfg.c + 1e-3], jnp.float32)
    np.testing.assert_array_equal(M.hard_mask(M.prune_probability(q, cfg.k, cfg.c)), [1, 0, 0])


def test_hard_mask_keep_one_keeps_lowest_pi_only_when_all_would_go():
    all_pruned = jnp.array([0.9, 0.6, 0.7, 0.55], jnp.float32)
    np.testing.assert_array_equal(M.hard_mask_keep_one(all_pruned), [0, 0, 0, 1])
    some_kept = jnp.array([0.9, 0.1, 0.7, 0.3], jnp.float32)
    np.testing.assert_array_equal(M.hard_mask_keep_one(some_kept), M.hard_mask(some_kept))
    np.testing.assert_array_equal(M.hard_mask_keep_one(some_kept), [0, 1, 0, 1])


def saturated_layer():
    """Three dead channels whose q rounds to 1 in float32: pi ties at sigmoid(k delta), z does not."""
    scale, bias = jnp.ones(3), jnp.array([-10.0, -8.0, -12.0])
    pi = M.prune_probability(M.deactivation_probability(scale, bias))
    return pi, M.deactivation_z(scale, bias)


def test_saturated_channels_tie_on_pi_but_not_on_z():
    pi, z = saturated_layer()
    assert np.all(np.asarray(pi) == np.asarray(pi)[0])  # argmin pi would pick index 0
    np.testing.assert_allclose(z, [10.05, 8.05, 12.05], rtol=1e-6)


def test_hard_mask_keep_one_breaks_pi_ties_on_z():
    pi, z = saturated_layer()
    np.testing.assert_array_equal(M.hard_mask_keep_one(pi, z), [0, 1, 0])  # bias -8 is the least dead
    np.testing.assert_array_equal(M.hard_mask_keep_one(pi), [1, 0, 0])  # without z: the first index


def test_z_orders_like_q_and_is_finite_at_zero_scale():
    scale = jnp.array([1.0, 0.5, 2.0, 0.0, 0.0])
    bias = jnp.array([0.3, -0.2, 0.1, 1.0, -1.0])
    z = np.asarray(M.deactivation_z(scale, bias))
    q = np.asarray(M.deactivation_probability(scale, bias))
    assert np.all(np.argsort(z[:3]) == np.argsort(q[:3]))
    assert not np.any(np.isnan(z)) and z[3] < 0 < z[4]


# ----------------------------------------------------------------------------------------------
# soft mask (binary Gumbel-Softmax)
# ----------------------------------------------------------------------------------------------


def test_soft_mask_in_unit_interval_and_finite_at_pi_0_and_1():
    pi = jnp.array([0.0, 1e-30, 0.3, 0.5, 1.0 - 1e-7, 1.0], jnp.float32)
    pi = jnp.tile(pi, 500)
    m = np.asarray(M.soft_mask(jax.random.key(0), pi, 0.5)).reshape(500, 6)
    assert np.all(np.isfinite(m)) and np.all((m >= 0) & (m <= 1))
    assert np.all(m[:, 0] > 0.5) and np.all(m[:, -1] < 0.5)  # pi = 0 always keeps, pi = 1 never


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_soft_mask_keep_rate_is_one_minus_pi(tau):
    n = 40_000
    pis = np.array([0.05, 0.3, 0.5, 0.731, 0.9], np.float32)
    m = np.asarray(M.soft_mask(jax.random.key(7), jnp.asarray(np.repeat(pis[:, None], n, axis=1)), tau))
    rates = np.mean(m > 0.5, axis=1)
    sigma = np.sqrt(pis * (1 - pis) / n)
    assert np.all(np.abs(rates - (1 - pis)) < 5 * sigma), (rates, 1 - pis, sigma)


def test_soft_mask_gradient_wrt_pi_is_finite_and_nonzero():
    key = jax.random.key(3)

    def mean_mask(pi):
        return jnp.mean(M.soft_mask(key, pi, 0.5))

    for value in (0.05, 0.3, 0.5, 0.7):
        g = float(jax.grad(mean_mask)(jnp.full((64,), value, jnp.float32)).sum())
        assert math.isfinite(g) and g < 0  # more pruning probability -> smaller masks
    for value in (0.0, 1.0):
        g = np.asarray(jax.grad(mean_mask)(jnp.full((64,), value, jnp.float32)))
        assert np.all(np.isfinite(g))


def test_soft_mask_is_a_function_of_the_key():
    pi = jnp.full((16,), 0.4, jnp.float32)
    a = M.soft_mask(jax.random.key(1), pi)
    np.testing.assert_array_equal(a, M.soft_mask(jax.random.key(1), pi))
    assert not np.array_equal(a, M.soft_mask(jax.random.key(2), pi))


# ----------------------------------------------------------------------------------------------
# penalty and pytree helpers
# ----------------------------------------------------------------------------------------------


def bn(scale, bias):
    return {"scale": jnp.array(scale, jnp.float32), "bias": jnp.array(bias, jnp.float32)}


def hand_made_params():
    return {
        "conv0": {"kernel": jnp.ones((3, 3, 3, 2))},
        "masked_bn0": bn([1.0, -2.0], [0.5, -3.0]),
        "block0": {
            "bn1": bn([5.0, 5.0], [5.0, 5.0]),  # unmasked: must not count
            "masked_bn2": bn([0.25, 0.0, -1.0], [-0.5, 0.0, 2.0]),
        },
        "masked_bn_final": bn([3.0], [-4.0]),
        "head": {"kernel": jnp.ones((1, 2)), "bias": jnp.zeros((2,))},
    }


def test_layer_penalty_bias_term_is_linear():
    scale, bias = [1.0, -2.0, 0.5], [0.3, -1.0, 2.0]
    expected = sum(bias) + 2.0 * sum(abs(s) for s in scale)  # 1.3 + 7 = 8.3; |bias| would give 10.3
    assert float(M.layer_penalty(jnp.array(scale), jnp.array(bias), 2.0)) == pytest.approx(expected)
    assert float(M.layer_penalty(jnp.array(scale), jnp.array(bias), 0.5)) == pytest.approx(1.3 + 0.5 * 3.5)


def test_sparsity_penalty_sums_masked_layers_only():
    params = hand_made_params()
    expected = ((0.5 - 3.0) + 2 * 3.0) + ((-0.5 + 0.0 + 2.0) + 2 * 1.25) + (-4.0 + 2 * 3.0)
    assert float(M.sparsity_penalty(params, 2.0)) == pytest.approx(expected)
    # the full variables dict works too, and the result is differentiable with the linear bias term
    assert float(M.sparsity_penalty({"params": params, "batch_stats": {}}, 2.0)) == pytest.approx(expected)
    grads = jax.grad(lambda p: M.sparsity_penalty(p, 2.0))(params)
    np.testing.assert_array_equal(grads["masked_bn0"]["bias"], [1.0, 1.0])
    np.testing.assert_array_equal(grads["masked_bn0"]["scale"], [2.0, -2.0])
    np.testing.assert_array_equal(grads["block0"]["bn1"]["bias"], [0.0, 0.0])


def test_sparsity_penalty_of_tree_without_masks_is_zero():
    assert float(M.sparsity_penalty({"conv": {"kernel": jnp.ones((2, 2))}})) == 0.0


def test_masked_layers_finds_prefix_names_only():
    names = sorted(M.masked_layers(hand_made_params()))
    assert names == ["block0/masked_bn2", "masked_bn0", "masked_bn_final"]


def test_hard_masks_and_kept_channels():
    params = {
        "masked_bn0": bn([1.0, 1.0, 0.1], [1.0, -5.0, 0.0]),  # q: 0.17, 1.0, 0.69
        "masked_bn1": bn([0.0, 0.0], [-1.0, -1.0]),
    }  # both always off
    masks = M.hard_masks(params)
    np.testing.assert_array_equal(masks["masked_bn0"], [1, 0, 1])
    np.testing.assert_array_equal(masks["masked_bn1"], [0, 0])
    counts = M.kept_channels(masks)
    assert counts["per_layer"] == {"masked_bn0": (2, 3), "masked_bn1": (0, 2)}
    assert (counts["kept"], counts["total"], counts["ratio"]) == (2, 5, 0.4)
    probs = M.layer_probabilities(params)
    expected = sum(
        1 - pi_reference(q_reference(s, b)) for s, b in [(1.0, 1.0), (1.0, -5.0), (0.1, 0.0), (0.0, -1.0), (0.0, -1.0)]
    )
    assert float(M.expected_kept_channels(params)) == pytest.approx(expected, rel=1e-5)
    assert float(probs["masked_bn0"]["q"][2]) == pytest.approx(q_reference(0.1, 0.0), abs=1e-6)


@pytest.mark.parametrize(
    "field,value",
    [
        ("eps", 0.0),
        ("eps", 1.5),
        ("delta", 1.0),
        ("delta", -0.1),
        ("k", 0.0),
        ("k", float("inf")),
        ("tau", -1.0),
        ("tau", "0.5"),
    ],
)
def test_mask_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        M.MaskConfig(**{field: value})
