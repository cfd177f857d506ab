"""The operation-aware unit BN -> ReLU -> mask (layers.py) and the empty-channel conv helper."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.errors import InvalidRngError

from soft_prune_jax.method import masks as M
from soft_prune_jax.method.units import GUMBEL_RNG, MaskedBNReLU
from soft_prune_jax.models import get_model
from soft_prune_jax.models.layers import conv

TINY_VGG = (4, "M", 8)


def init_unit(unit, x):
    return unit.init(jax.random.key(0), x)


def with_bn(variables, scale, bias):
    params = {**variables["params"], "scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    return {**variables, "params": params}


def test_plain_unit_matches_flax_batchnorm_then_relu():
    x = jax.random.normal(jax.random.key(1), (6, 3, 3, 5)) * 2.0 + 1.0
    ours = MaskedBNReLU(None)
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    v_ours, v_ref = init_unit(ours, x), ref.init(jax.random.key(0), x)
    v_ours = with_bn(v_ours, jnp.linspace(0.5, 2, 5), jnp.linspace(-1, 1, 5))
    v_ref = {**v_ref, "params": dict(v_ours["params"])}

    @jax.jit
    def both(v_ours, v_ref):
        y, upd = ours.apply(v_ours, x, train=True, mutable=["batch_stats"])
        y_ref, upd_ref = ref.apply(v_ref, x, mutable=["batch_stats"])
        y_eval = ours.apply({**v_ours, **upd}, x)
        y_eval_ref = nn.BatchNorm(use_running_average=True).apply({**v_ref, **upd_ref}, x)
        return y, nn.relu(y_ref), upd, upd_ref, y_eval, nn.relu(y_eval_ref)

    y, y_ref, upd, upd_ref, y_eval, y_eval_ref = both(v_ours, v_ref)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    for stat in ("mean", "var"):
        np.testing.assert_allclose(upd["batch_stats"][stat], upd_ref["batch_stats"][stat], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_eval, y_eval_ref, atol=1e-5)


def test_gradient_reaches_scale_through_the_soft_mask_alone():
    # A batch-constant input normalises to exactly 0, so the BN output is the bias: y = relu(b) * m.
    # The scale then only acts through q -> pi -> m: its gradient is the mask's gradient.
    unit = MaskedBNReLU(M.MaskConfig())
    x = jnp.full((4, 2, 2, 3), 0.7)
    variables = with_bn(init_unit(unit, x), [0.02, 0.03, -0.02], [0.01, 0.02, 0.01])  # pi ~ 0.3..0.7

    def loss(params, key):
        y, _ = unit.apply(
            {**variables, "params": params}, x, train=True, rngs={GUMBEL_RNG: key}, mutable=["batch_stats"]
        )
        return jnp.sum(y)

    grad = jax.jit(jax.grad(loss))
    for seed in range(3):
        g = grad(variables["params"], jax.random.key(seed))
        assert np.all(np.isfinite(g["scale"])) and np.all(np.abs(g["scale"]) > 0), g
        assert np.all(np.isfinite(g["bias"])) and np.all(np.abs(g["bias"]) > 0), g


def numpy_variables(model, x, seed=0):
    """Variables with the model's shapes, filled by numpy: BN scale/var 1, bias/mean 0, He-normal
    kernels. Compiling ``model.init`` (its PRNG draws) costs seconds per model on 2 cores."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), leaf.dtype)

    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def tiny_vgg(mask=M.MaskConfig()):
    """A 2-conv VGG on 8x8 inputs (cached)."""
    model = get_model("vgg16", 3, widths=TINY_VGG, mask=mask)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    return model, numpy_variables(model, x), x


def test_tiny_model_loss_gradients_wrt_bn_scale_and_bias_are_finite_and_nonzero():
    model, variables, x = tiny_vgg()
    labels = jnp.array([0, 1, 2, 1])

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            rngs={GUMBEL_RNG: jax.random.key(2)},
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = M.masked_layers(jax.jit(jax.grad(loss))(variables["params"]))
    assert sorted(grads) == ["masked_bn0", "masked_bn1"]
    for name, g in grads.items():
        for leaf in ("scale", "bias"):
            assert np.all(np.isfinite(g[leaf])), (name, leaf)
            assert np.any(np.abs(g[leaf]) > 0), (name, leaf)


def test_evaluation_is_deterministic_and_needs_no_rng():
    model, variables, x = tiny_vgg()
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))  # no rngs passed
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


def test_training_without_gumbel_rng_fails():
    model, variables, x = tiny_vgg()
    with pytest.raises(InvalidRngError, match=GUMBEL_RNG):
        model.apply(variables, x, train=True, mutable=["batch_stats"])


def test_running_stats_update_only_where_the_sampled_mask_keeps(monkeypatch):
    """Default config: capture the layer's own Gumbel sample and check the gate channel by channel."""
    samples = []
    real_soft_mask = M.soft_mask

    def recording_soft_mask(key, prune_prob, tau=0.5):
        m = real_soft_mask(key, prune_prob, tau)
        samples.append(m)
        return m

    monkeypatch.setattr(M, "soft_mask", recording_soft_mask)
    unit = MaskedBNReLU(M.MaskConfig())
    x = jax.random.normal(jax.random.key(4), (32, 2, 2, 8)) + 3.0
    # half the channels near q ~ 1 (pi ~ 0.73: pruned, yet sampled "keep" ~27% of the time)
    variables = with_bn(init_unit(unit, x), jnp.ones(8), jnp.array([2.0] * 4 + [-4.0] * 4))
    batch_mean = np.asarray(x).reshape(-1, 8).mean(0)
    saw_keep = saw_prune = False
    for seed in range(6):
        samples.clear()
        _, upd = unit.apply(variables, x, train=True, rngs={GUMBEL_RNG: jax.random.key(seed)}, mutable=["batch_stats"])
        keep = np.asarray(samples[0]) > 0.5
        saw_keep |= bool(keep[4:].any())
        saw_prune |= bool((~keep).any())
        mean, var = np.asarray(upd["batch_stats"]["mean"]), np.asarray(upd["batch_stats"]["var"])
        np.testing.assert_allclose(mean[keep], 0.1 * batch_mean[keep], rtol=1e-4)
        np.testing.assert_array_equal(mean[~keep], 0.0)
        np.testing.assert_array_equal(var[~keep], 1.0)
        assert np.all(var[keep] != 1.0)
    assert saw_keep and saw_prune  # both branches of the gate were exercised


def test_running_stats_of_pruned_channels_stay_put_in_a_training_step():
    # With k = 1000, pi of a dead channel is 1 in float32, so its sample is "prune" every time.
    model, variables, x = tiny_vgg(M.MaskConfig(k=1000.0))
    params = variables["params"]
    bias = params["masked_bn0"]["bias"].at[:2].set(-20.0)
    params = {**params, "masked_bn0": {**params["masked_bn0"], "bias": bias}}
    pi = M.layer_probabilities(params, M.MaskConfig(k=1000.0))["masked_bn0"]["pi"]
    assert np.all(np.asarray(pi[:2]) == 1.0) and np.all(np.asarray(pi[2:]) < 1e-6)
    before = variables["batch_stats"]["masked_bn0"]
    for seed in range(3):
        _, upd = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            rngs={GUMBEL_RNG: jax.random.key(seed)},
            mutable=["batch_stats"],
        )
        after = upd["batch_stats"]["masked_bn0"]
        for stat in ("mean", "var"):
            np.testing.assert_array_equal(after[stat][:2], before[stat][:2])
            assert np.all(after[stat][2:] != before[stat][2:])  # kept channels do learn


def dead_but_active_channel(mask):
    """A unit whose channel 0 has q ~ 0.999 (pruned) although its ReLU output is 2 at x = 5."""
    unit = MaskedBNReLU(mask)
    x = jnp.full((1, 1, 1, 2), 5.0)
    variables = with_bn(init_unit(unit, x), [1.0, 1.0], [-3.0, 0.5])
    return unit.apply(variables, x, train=False)[0, 0, 0]


def test_evaluation_hard_mask_zeroes_pruned_channels_exactly():
    y = np.asarray(dead_but_active_channel(M.MaskConfig()))
    assert y[0] == 0.0 and y[1] == pytest.approx(5.5, rel=1e-4)


def test_dense_baseline_has_no_mask_effect():
    y = np.asarray(dead_but_active_channel(None))
    np.testing.assert_allclose(y, [2.0, 5.5], rtol=1e-4)


def test_keep_at_least_one_breaks_saturated_pi_ties_on_z():
    # q rounds to 1 for all three: pi ties at sigmoid(k delta); bias -8 has the lowest z.
    x = jnp.full((1, 1, 1, 3), 20.0)
    unit = MaskedBNReLU(M.MaskConfig(), keep_at_least_one=True)
    y = unit.apply(with_bn(init_unit(unit, x), jnp.ones(3), [-10.0, -8.0, -12.0]), x)
    np.testing.assert_allclose(y[0, 0, 0], [0.0, 12.0, 0.0], rtol=1e-4)


def test_keep_at_least_one_keeps_the_lowest_pi_channel():
    x = jnp.full((1, 1, 1, 3), 6.0)
    bias = [-3.0, -2.5, -4.0]  # all pruned; -2.5 has the lowest q
    for keep_one, expected in ((False, [0.0, 0.0, 0.0]), (True, [0.0, 3.5, 0.0])):
        unit = MaskedBNReLU(M.MaskConfig(), keep_at_least_one=keep_one)
        y = unit.apply(with_bn(init_unit(unit, x), jnp.ones(3), bias), x)
        np.testing.assert_allclose(y[0, 0, 0], expected, rtol=1e-4)


def test_synchronised_bn_matches_a_single_device_batch():
    unit = MaskedBNReLU(None, axis_name="devices")
    x = jax.random.normal(jax.random.key(5), (8, 2, 2, 3)) * 3.0 + 1.0
    variables = init_unit(MaskedBNReLU(None), x)
    y_full, upd_full = MaskedBNReLU(None).apply(variables, x, train=True, mutable=["batch_stats"])
    shards = x.reshape(2, 4, 2, 2, 3)
    y_sharded, upd_sharded = jax.vmap(
        lambda xs: unit.apply(variables, xs, train=True, mutable=["batch_stats"]), axis_name="devices"
    )(shards)
    np.testing.assert_allclose(y_sharded.reshape(x.shape), y_full, atol=1e-5)
    np.testing.assert_allclose(upd_sharded["batch_stats"]["mean"][0], upd_full["batch_stats"]["mean"], atol=1e-6)


def test_unit_on_zero_channels_is_the_identity():
    x = jnp.zeros((2, 3, 3, 0))
    unit = MaskedBNReLU(M.MaskConfig())
    variables = init_unit(unit, x)
    assert variables["params"]["scale"].shape == (0,)
    assert unit.apply(variables, x, train=True, rngs={GUMBEL_RNG: jax.random.key(0)}, mutable=["batch_stats"])[
        0
    ].shape == (2, 3, 3, 0)


class ConvProbe(nn.Module):
    features: int
    kernel: int
    stride: int
    padding: str

    @nn.compact
    def __call__(self, x):
        return conv(x, self.features, self.kernel, self.stride, padding=self.padding, name="c")


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_on_empty_channel_sets_is_exact_zero_without_params(padding, stride):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    full = ConvProbe(4, 3, stride, padding)
    y_full = jax.eval_shape(lambda x: full.apply(full.init(jax.random.key(0), x), x), x)
    for features, x_in in ((0, x), (4, x[..., :0])):
        probe = ConvProbe(features, 3, stride, padding)
        variables = probe.init(jax.random.key(0), x_in)
        assert jax.tree_util.tree_leaves(variables) == []
        y = probe.apply(variables, x_in)
        assert y.shape == y_full.shape[:-1] + (features,)
        np.testing.assert_array_equal(y, 0.0)
