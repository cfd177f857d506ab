"""fast_conv equals XLA's conv; the benchmark measures what it says and emits the documented JSON."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from soft_prune_jax.measure import timing as B
from soft_prune_jax.models import get_model
from soft_prune_jax.models.user import UserModel
from soft_prune_jax.ops import fast_conv as F
from soft_prune_jax.traced import macs, masked

from conftest import normal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RESNET = dict(stage_sizes=(1, 1, 1), stage_widths=(4, 8, 8), stem_width=4)
TINY_VGG = dict(widths=(8, "M", 8))


def reference_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def random_pair(seed, x_shape, k_shape):
    return normal(2 * seed, x_shape), normal(2 * seed + 1, k_shape)


# ---------------------------------------------------------------------------------------------
# fast_conv
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def all_formulations(x, kernel, strides, padding, formulations):
    """The reference and every formulation in one compiled function (one compile per example)."""
    return reference_conv(x, kernel, strides, padding), [F.conv2d(x, kernel, strides, padding, f) for f in formulations]


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 2),
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    cin=st.integers(1, 5),
    cout=st.integers(1, 5),
    kh=st.sampled_from([1, 2, 3]),
    kw=st.sampled_from([1, 3]),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.sampled_from(["SAME", "VALID", ((1, 0), (0, 2))]),
    seed=st.integers(0, 2**16),
)
def test_every_formulation_equals_lax_conv(batch, height, width, cin, cout, kh, kw, strides, padding, seed):
    x, kernel = random_pair(seed, (batch, height, width, cin), (kh, kw, cin, cout))
    pads = F.explicit_padding((height, width), (kh, kw), strides, padding)
    if 0 in F.output_spatial((height, width), (kh, kw), strides, pads):
        return  # the window does not fit; covered by test_window_larger_than_input
    formulations = ("xla", "im2col", "auto") + (("matmul",) if (kh, kw) == (1, 1) else ())
    expected, outputs = all_formulations(x, kernel, strides, padding, formulations)
    for formulation, got in zip(formulations, outputs):
        assert got.shape == expected.shape, formulation
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=formulation)


@pytest.mark.parametrize("formulation", ["xla", "im2col", "auto"])
@pytest.mark.parametrize("cin,cout", [(0, 3), (3, 0), (0, 0)])
def test_empty_channel_sets(formulation, cin, cout):
    x, kernel = random_pair(0, (2, 5, 5, cin), (3, 3, cin, cout))
    got = F.conv2d(x, kernel, 2, "SAME", formulation)
    assert got.shape == (2, 3, 3, cout)
    assert not np.any(np.asarray(got))


def test_window_larger_than_input():
    x, kernel = random_pair(0, (1, 2, 2, 3), (3, 3, 3, 4))
    for formulation in ("xla", "im2col"):
        assert F.conv2d(x, kernel, 1, "VALID", formulation).shape == (1, 0, 0, 4)


def test_im2col_gradients_equal_xla_gradients():
    x, kernel = random_pair(1, (2, 4, 4, 3), (3, 3, 3, 5))

    def loss(formulation):
        return lambda x, k: jnp.sum(jnp.sin(F.conv2d(x, k, 2, "SAME", formulation)))

    for got, expected in zip(jax.grad(loss("im2col"), (0, 1))(x, kernel), jax.grad(loss("xla"), (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_auto_rule():
    assert F.choose_formulation((64, 32, 32, 16), (1, 1, 16, 32), 2) == "matmul"
    assert F.choose_formulation((64, 2, 2, 512), (3, 3, 512, 512), 1) == "im2col"
    assert F.choose_formulation((64, 4, 4, 512), (3, 3, 512, 512), 2) == "im2col"  # output 2x2
    assert F.choose_formulation((64, 4, 4, 512), (3, 3, 512, 512), 1) == "xla"
    assert F.choose_formulation((64, 32, 32, 16), (3, 3, 16, 16), 1) == "xla"
    assert F.choose_formulation((1, 4, 4, 512), (3, 3, 512, 512), 1) == "im2col"  # a 16-row GEMM
    assert F.choose_formulation((1, 16, 16, 64), (3, 3, 64, 64), 1) == "xla"
    # one example of a computation run at any batch size (an exported artifact): no whole-batch rule
    assert F.choose_formulation((1, 7, 7, 64), (3, 3, 64, 64), 1) == "im2col"
    assert F.choose_formulation((1, 7, 7, 64), (3, 3, 64, 64), 1, any_batch=True) == "xla"
    assert F.choose_formulation((1, 2, 2, 64), (3, 3, 64, 64), 1, any_batch=True) == "im2col"


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x, k: F.conv2d(x, k, formulation="fft"), "formulation='fft'"),
        (lambda x, k: F.conv2d(x, k, formulation="matmul"), "needs a 1x1 kernel"),
        (lambda x, k: F.conv2d(x, k, padding="FULL"), "padding='FULL'"),
        (lambda x, k: F.conv2d(x, k, strides=0), "strides"),
        (lambda x, k: F.conv2d(x[..., :2], k), "input channels 2"),
    ],
)
def test_errors_name_the_bad_value(call, match):
    x, kernel = random_pair(0, (1, 4, 4, 3), (3, 3, 3, 2))
    with pytest.raises(ValueError, match=match):
        call(x, kernel)


def test_conv_module_restores_nn_conv_parameters():
    x = normal(0, (2, 2, 2, 3))
    dense_conv = nn.Conv(4, (3, 3), use_bias=True)
    variables = dense_conv.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda v: v + normal(2, v.shape), variables)  # non-zero bias
    fast = F.Conv(4, (3, 3), use_bias=True, formulation="im2col")
    initial = dense_conv.init(jax.random.key(1), x)
    # Same names, shapes and even the same initial values for the same key: a transparent swap.
    jax.tree.map(np.testing.assert_array_equal, fast.init(jax.random.key(1), x), initial)
    np.testing.assert_allclose(fast.apply(variables, x), dense_conv.apply(variables, x), rtol=1e-5, atol=1e-5)
    fast = F.Conv(4, (3, 3), use_bias=True)  # 'auto': im2col on a 2x2 input, unless overridden
    assert "conv_general_dilated" not in str(jax.make_jaxpr(fast.apply)(variables, x))
    with F.flax_conv_formulation("xla"):
        assert "conv_general_dilated" in str(jax.make_jaxpr(lambda v, x: fast.apply(v, x))(variables, x))


def test_flax_conv_formulation_swaps_the_convs_of_a_model():
    model = get_model("vgg16", 10, widths=(4, "M", 8, "M", 8))  # 8x8 input: the last conv sees 2x2
    x = normal(0, (2, 8, 8, 3))
    variables = model.init(jax.random.key(1), x)

    def apply(v, x):
        return model.apply(v, x, train=False)

    with F.flax_conv_formulation("im2col"):
        swapped = jax.jit(apply).lower(variables, x)
    plain = jax.jit(lambda v, x: apply(v, x)).lower(variables, x)  # a new function: no trace cache hit
    assert "conv_general_dilated" not in swapped.as_text() and "convolution" not in swapped.as_text()
    assert "convolution" in plain.as_text()
    np.testing.assert_allclose(swapped.compile()(variables, x), plain.compile()(variables, x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------


def test_summarize_and_flop_rate():
    s = B.summarize([0.004, 0.001, 0.003, 0.002, 0.005])
    assert s["median_ms"] == pytest.approx(3.0) and s["min_ms"] == pytest.approx(1.0) and s["runs"] == 5
    assert s["p10_ms"] < s["median_ms"] < s["p90_ms"]
    assert B.flop_rate(1e9, 1000.0) == pytest.approx(2.0)  # 1 G MACs in 1 s = 2 GFLOP/s


def test_time_inference_reports_the_documented_keys():
    model = get_model("vgg16", 10, **TINY_VGG)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    result = B.time_inference(model, variables, 2, runs=3, warmup=1, input_shape=(16, 16, 3))
    assert {"median_ms", "p10_ms", "p90_ms", "min_ms", "runs", "batch_size", "device"} <= set(result)
    assert result["runs"] == 3 and result["batch_size"] == 2 and result["device"].startswith("cpu")
    assert 0 < result["min_ms"] <= result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    with pytest.raises(ValueError, match="runs=0"):
        B.time_inference(model, variables, 2, runs=0, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="batch_size=0"):
        B.time_inference(model, variables, 0, input_shape=(16, 16, 3))


def test_layer_shapes_agree_with_the_graphs_mac_count():
    model = get_model("resnet56", 10, **TINY_RESNET)
    x = jnp.zeros((1, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    shapes = B.layer_shapes(model, variables, 3, (16, 16, 3))
    analysis = masked.UnitSet.analyze(UserModel("resnet56", "linen", lambda _: model, model), variables, x).analysis
    count = macs.count(analysis)
    assert [s.path for s in shapes] == [row.path for row in count.layers]
    assert [s.macs for s in shapes] == [3 * row.macs for row in count.layers]
    assert any(s.strides == (2, 2) for s in shapes)


def test_time_layers_groups_identical_shapes():
    model = get_model("vgg16", 10, widths=(4, 4, 4, "M", 8))  # conv1 and conv2 have the same shapes
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    rows = B.time_layers(model, variables, 2, input_shape=(4, 4, 3), formulations=("xla", "auto"), runs=1, warmup=0)
    assert [r["count"] for r in rows] == [1, 2, 1, 1]  # conv0, conv1+conv2, conv3 (on 2x2), head
    assert rows[2]["auto"]["formulation"] == "im2col" and rows[2]["xla"]["formulation"] == "xla"
    assert all(r["xla"]["median_ms"] > 0 and r["auto"]["gflops"] > 0 for r in rows)


def test_time_train_steps_reports_ratios_to_the_forward():
    forward = (lambda x: x @ x, (jnp.ones((8, 8)),))
    steps = {
        "plain": (lambda x: x @ x @ x, (jnp.ones((8, 8)),)),
        "scp": (lambda x: (x @ x) @ (x @ x), (jnp.ones((8, 8)),)),
    }
    result = B.time_train_steps(forward, steps, runs=2, warmup=1)
    assert result["forward"]["runs"] == result["plain"]["runs"] == result["scp"]["runs"] == 2
    assert result["over_forward"]["scp"] == pytest.approx(result["scp"]["median_ms"] / result["forward"]["median_ms"])
    assert result["ratio"] == pytest.approx(result["scp"]["median_ms"] / result["plain"]["median_ms"])
    with pytest.raises(ValueError, match="may not be named 'forward'"):
        B.time_train_steps(forward, {"forward": forward})


def test_launch_emits_json_with_the_documented_keys(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch", "benchmark.py"),
        "--model=vgg16",
        f"--model_kwargs={json.dumps(TINY_VGG)}",
        "--input_shape=8,8,3",
        "--batch_sizes=1,2",
        "--runs=2",
        "--warmup=0",
        "--random_prune=0.5",
        "--round_to=1",  # widths by latency may keep every channel of a model this small
        "--train_step",
        f"--json={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"device", "sgemm_gflops", "dense", "compact", "mac_ratio", "macs_reduction_pct", "rows"} <= set(result)
    assert result["compact"]["macs"] < result["dense"]["macs"]
    assert result["mac_ratio"] == pytest.approx(result["dense"]["macs"] / result["compact"]["macs"])
    assert [row["batch_size"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["speedup"] == pytest.approx(row["dense"]["median_ms"] / row["compact"]["median_ms"])
        assert row["speedup_over_mac_ratio"] == pytest.approx(row["speedup"] / result["mac_ratio"])
        assert row["dense_sgemm_fraction"] == pytest.approx(row["dense_gflops"] / result["sgemm_gflops"])
    assert "speed-up" in proc.stdout  # the human table
    step = result["train_step"]  # the training package's own step, plain and SCP, against the forward
    assert step["batch_size"] == 2 and {"forward", "plain", "scp", "over_forward", "ratio"} <= set(step)
    assert step["over_forward"]["scp"] == pytest.approx(step["scp"]["median_ms"] / step["forward"]["median_ms"])
    if len(os.sched_getaffinity(0)) >= 2 and "--xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""
    ):  # config.cpu_devices='auto' splits the CPU in two: also the step as the training loop runs it there
        split = step["scp_2_devices"]
        assert step["over_forward"]["scp_2_devices"] == pytest.approx(split["median_ms"] / step["forward"]["median_ms"])

    bad = subprocess.run(cmd[:2] + ["--batch_sizes=0"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode != 0 and "--batch_sizes='0' is invalid" in bad.stderr


def test_launch_on_a_workdir_whose_dataset_does_not_resolve_is_one_line(tmp_path):
    from soft_prune_jax.training import checkpoint

    from conftest import tiny_config

    # A pipeline's workdir benchmarked where its module cannot be imported: the class count is unknown.
    checkpoint.ensure_workdir_config(str(tmp_path), tiny_config(dataset="no_such_module_here:pipeline"))
    cmd = [sys.executable, os.path.join(REPO, "launch", "benchmark.py"), f"--workdir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("config.dataset='no_such_module_here:pipeline': cannot import") and last.endswith(
        "(benchmarking a workdir resolves its dataset again: run it where it was trained, with the same data_dir)"
    ), last
