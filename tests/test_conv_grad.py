"""Every gradient formulation of ops.conv_grad equals XLA's own convolution gradients (float32)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from soft_prune_jax.ops import conv_grad as G
from soft_prune_jax.ops import fast_conv as F
from soft_prune_jax.ops.conv_geometry import explicit_padding, output_spatial

from conftest import normal


def reference_grads(x, kernel, strides, padding, cotangent):
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=strides, padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.vjp(conv, x, kernel)[1](cotangent)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def all_grads(x, kernel, strides, padding, combos, cotangent):
    """The reference gradients and those of every (forward, weight_grad) pair, in one compile."""
    ours = []
    for f, g in combos:
        conv = functools.partial(F.conv2d, strides=strides, padding=padding, formulation=f, weight_grad=g)
        ours.append(jax.vjp(conv, x, kernel)[1](cotangent))
    return reference_grads(x, kernel, strides, padding, cotangent), ours


@settings(max_examples=6, deadline=None)
@given(
    batch=st.integers(1, 4),
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    kh=st.sampled_from([1, 2, 3]),
    kw=st.sampled_from([1, 3]),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.sampled_from(["SAME", "VALID", ((1, 0), (0, 2))]),
    seed=st.integers(0, 2**16),
)
def test_every_gradient_formulation_equals_xla(batch, height, width, cin, cout, kh, kw, strides, padding, seed):
    pads = explicit_padding((height, width), (kh, kw), strides, padding)
    out_hw = output_spatial((height, width), (kh, kw), strides, pads)
    if 0 in out_hw:
        return  # the window does not fit: conv2d returns zeros without a VJP of its own
    x = normal(3 * seed, (batch, height, width, cin))
    kernel = normal(3 * seed + 1, (kh, kw, cin, cout))
    cotangent = normal(3 * seed + 2, (batch,) + out_hw + (cout,))
    forwards = ("xla", "im2col", "auto") + (("matmul",) if (kh, kw) == (1, 1) else ())
    grads = ("auto", "autodiff", "chunked_im2col") + (("matmul",) if (kh, kw) == (1, 1) else ())
    combos = tuple((f, g) for f in forwards for g in grads)
    (dx_ref, dw_ref), ours = all_grads(x, kernel, strides, padding, combos, cotangent)
    for (f, g), (dx, dw) in zip(combos, ours):
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4, err_msg=f"input grad, {f}/{g}")
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4, err_msg=f"weight grad, {f}/{g}")


@pytest.mark.parametrize("chunk_bytes", [1, 700, 10**9])
def test_chunked_weight_grad_equals_xla_for_every_chunking(chunk_bytes):
    # 1 byte: one example per chunk (a scan over 6); 700: 2 examples (3*3 positions * 18 * 4 bytes each); 1e9: no scan.
    x, kernel = normal(0, (6, 5, 5, 2)), normal(1, (3, 3, 2, 3))
    pads = explicit_padding((5, 5), (3, 3), (2, 2), "SAME")
    dy = normal(2, (6, 3, 3, 3))
    expected = reference_grads(x, kernel, (2, 2), pads, dy)[1]
    got = G.chunked_im2col_weight_grad(x, dy, (3, 3), (2, 2), pads, chunk_bytes)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_chunk_size_is_the_largest_divisor_within_the_limit():
    assert G.chunk_size(128, 1000, 4000) == 4
    assert G.chunk_size(6, 100, 350) == 3
    assert G.chunk_size(7, 100, 350) == 1  # 7 is prime: one example per chunk
    assert G.chunk_size(8, 10**9, 4000) == 1  # one example over the limit still runs alone
    assert G.chunk_size(8, 1, 4000) == 8


def test_input_grad_rule():
    assert G.choose_input_grad((3, 3, 8, 8), (2, 2), "xla") == "im2col"
    assert G.choose_input_grad((3, 3, 8, 8), (1, 1), "xla") == "xla"
    assert G.choose_input_grad((1, 1, 8, 8), (2, 2), "matmul") == "matmul"


def test_rule_matches_the_forward_and_kernel():
    assert G.choose_weight_grad((1, 1, 8, 8), "matmul") == "matmul"
    assert G.choose_weight_grad((3, 3, 8, 8), "xla") == "chunked_im2col"
    assert G.choose_weight_grad((3, 3, 8, 8), "im2col") == "autodiff"


def test_bad_weight_grad_is_one_line_error():
    x, kernel = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="weight_grad='fast' is invalid"):
        F.conv2d(x, kernel, weight_grad="fast")
    with pytest.raises(ValueError, match="weight_grad='matmul' needs a 1x1 kernel"):
        F.conv2d(x, kernel, weight_grad="matmul")


def test_model_gradients_equal_xla_gradients(monkeypatch):
    """A tiny ResNet's parameter gradients under the default rule equal those with XLA's conv gradients."""
    import flax.linen as nn

    from soft_prune_jax.models import get_model

    model = get_model("resnet56", 10, stage_sizes=(1, 1, 1), stage_widths=(4, 8, 8), stem_width=4, norm=nn.BatchNorm)
    x = normal(0, (4, 8, 8, 3))
    variables = model.init(jax.random.key(1), x)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out**2)

    ours = jax.jit(jax.grad(loss))(variables["params"])  # jitted, as the trainer runs it
    monkeypatch.setattr(G, "choose_weight_grad", lambda kernel_shape, forward: "autodiff")
    reference = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree_util.tree_leaves(ours)
    assert len(leaves) > 10
    for a, b in zip(leaves, jax.tree_util.tree_leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 6, 6, 3), (1, 7, 5, 2), (3, 2, 2, 1)])
def test_max_pool_2x2_equals_flax_max_pool_and_its_gradient(shape):
    import flax.linen as nn

    from soft_prune_jax.ops.pooling import max_pool_2x2

    x = normal(0, shape)  # no ties: the gradients agree exactly

    def reference(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2))

    np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
    loss = lambda pool: jax.grad(lambda x_: jnp.sum(jnp.sin(pool(x_))))(x)  # noqa: E731
    np.testing.assert_allclose(loss(max_pool_2x2), loss(reference), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs a 4-D NHWC input"):
        max_pool_2x2(x[0])


def test_max_pool_2x2_sends_each_windows_gradient_to_exactly_one_entry():
    """On ties the whole cotangent goes to the window's first maximum (as ``select_and_scatter`` picks),
    jitted or not: never split, never lost."""
    from soft_prune_jax.ops.pooling import max_pool_2x2

    x = jnp.zeros((2, 5, 4, 3), jnp.float32).at[0, 2, 1, 0].set(1.0)  # ties everywhere but one window
    g = normal(1, (2, 2, 2, 3))
    for grad in (jax.vjp(max_pool_2x2, x)[1], jax.jit(jax.vjp(max_pool_2x2, x)[1])):
        (dx,) = grad(g)
        windows = np.asarray(dx)[:, :4, :4].reshape(2, 2, 2, 2, 2, 3)
        np.testing.assert_allclose(windows.sum(axis=(2, 4)), np.asarray(g), rtol=1e-6)  # nothing lost
        assert (np.count_nonzero(windows, axis=(2, 4)) <= 1).all()  # one entry per window
        assert dx[0, 2, 1, 0] == g[0, 1, 0, 0] and dx[0, 0, 0, 1] == g[0, 0, 0, 1]  # the max; else the first
        assert not np.asarray(dx)[:, 4].any()  # the cropped row gets nothing


def _primitives(fn, *args):
    """Every primitive of ``fn``'s jaxpr, nested jaxprs (jit, custom_vjp) included."""
    names, todo = set(), [jax.make_jaxpr(lambda *a: fn(*a))(*args).jaxpr]  # a new function: no cached trace
    while todo:
        for eqn in todo.pop().eqns:
            names.add(eqn.primitive.name)
            todo += [getattr(p, "jaxpr", p) for p in jax.core.jaxprs_in_params(eqn.params)]
    return names


def _conv_and_grad(x, k):
    return jax.value_and_grad(lambda k: jnp.sum(F.conv2d(x, k, 1, "SAME") ** 2))(k)


def test_auto_is_xla_own_conv_off_the_cpu(monkeypatch):
    # The formulations were chosen by XLA:CPU measurements: a GPU run keeps XLA's conv and its gradient.
    x, k1, k3 = jnp.ones((2, 4, 4, 8)), jnp.ones((1, 1, 8, 16)), jnp.ones((3, 3, 8, 16))
    on_cpu = _primitives(_conv_and_grad, x, k1)
    assert "dot_general" in on_cpu and "conv_general_dilated" not in on_cpu  # 1x1 -> matmul on the CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    for kernel in (k1, k3):
        off_cpu = _primitives(_conv_and_grad, x, kernel)
        assert "conv_general_dilated" in off_cpu and "custom_vjp_call" not in off_cpu, off_cpu
        assert "dot_general" not in off_cpu, off_cpu
    assert "dot_general" in _primitives(lambda x, k: F.conv2d(x, k, 1, "SAME", formulation="matmul"), x, k1)
