"""A user's own model (tests/user_zoo.py, named as ``user_zoo:NAME``) through SCP and the whole pipeline.

Masks inserted from outside are checked against a step computed by hand (soft mask on the ReLU
output, running statistics updated only where the sample keeps, hard mask at evaluation); the
penalty covers exactly the units of prunable groups; a Flax-ImageNet-style ResNet (BN with
axis_name='batch') and an NNX CNN run every phase on synthetic data under pmap and shard_map; dense
and slimming train and cut; a killed run resumes exactly; bad models are one line before training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soft_prune_jax import pipeline
from soft_prune_jax.compact import artifact
from soft_prune_jax.compact.artifact import ExportError
from soft_prune_jax.measure import flops
from soft_prune_jax.models import user
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.scp import masks as M
from soft_prune_jax.traced import macs, masked
from soft_prune_jax.training import config_validation

from conftest import SyntheticData, normal, run_child, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
ALL = "train,prune,finetune,evaluate,benchmark,report"


def user_config(spec: str, **overrides):
    fields = dict(
        model=spec, num_classes=10, num_epochs=2, lr_boundaries=(1,), num_train_examples=128, sparsity_lambda=1.0
    )
    config = tiny_config(**{**fields, **overrides})
    config.model_kwargs = {}
    return config


# ---- masks inserted from outside, against a hand-computed step ----------------------------------


def _tiny(scale, bias):
    model = user.build("user_zoo:Tiny", 4, {})
    x = normal(0, (6, 5, 5, 2))
    variables = model.init(jax.random.PRNGKey(1), x)
    variables["params"]["BatchNorm_0"] = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    variables["batch_stats"]["BatchNorm_0"] = {
        "mean": jnp.asarray([0.1, -0.2, 0.3]),
        "var": jnp.asarray([1.5, 0.5, 2.0]),
    }
    units = masked.UnitSet.analyze(model, variables, x)
    return model, variables, x, units


def _by_hand(variables, x, mask, train):
    p, s = variables["params"], variables["batch_stats"]["BatchNorm_0"]
    h = jnp.einsum("nhwc,cd->nhwd", x, p["Conv_0"]["kernel"][0, 0])
    mean, var = (h.mean((0, 1, 2)), h.var((0, 1, 2))) if train else (s["mean"], s["var"])
    bn = p["BatchNorm_0"]
    y = jax.nn.relu((h - mean) / jnp.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]) * mask
    logits = y.mean((1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    return logits, mean, var


def test_masked_train_step_equals_the_step_by_hand():
    scale, bias = np.array([1.0, 0.5, 0.01], np.float32), np.array([0.5, 0.3, -1.0], np.float32)
    model, variables, x, units = _tiny(scale, bias)
    assert [u.name for u in units.units] == ["BatchNorm_0"]
    scp = masked.MaskedModel(model, units, "soft", mask=M.MaskConfig())
    pi = M.prune_probability(M.deactivation_probability(scale, bias))
    for seed in range(50):  # a step key whose sample keeps some channels and drops others
        key = jax.random.PRNGKey(seed)
        mask = M.soft_mask(jax.random.fold_in(key, 0), pi, 0.5)
        if 0 < int(jnp.sum(mask > 0.5)) < 3:
            break
    else:
        pytest.fail("no key gave a mixed keep/drop sample")
    logits, state = jax.jit(lambda v, x: scp.apply(v, x, train=True, rngs={"gumbel": key}, mutable=["batch_stats"]))(
        variables, x
    )
    want, mean, var = _by_hand(variables, x, mask, train=True)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    old = variables["batch_stats"]["BatchNorm_0"]
    keep = np.asarray(mask) > 0.5
    got = state["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(got["mean"], np.where(keep, 0.9 * old["mean"] + 0.1 * mean, old["mean"]), rtol=1e-5)
    np.testing.assert_allclose(got["var"], np.where(keep, 0.9 * old["var"] + 0.1 * var, old["var"]), rtol=1e-5)
    # evaluation: the hard mask [pi < 0.5] on the running statistics
    hard = M.hard_mask(pi)
    assert np.asarray(hard).tolist() == [1.0, 1.0, 0.0]
    np.testing.assert_allclose(
        scp.apply(variables, x), _by_hand(variables, x, hard, train=False)[0], rtol=1e-5, atol=1e-6
    )


def test_penalty_covers_exactly_the_units_of_prunable_groups():
    config = user_config("user_zoo:resnet_tiny")
    phase = model_path.training_phase(config, (8, 8, 1))
    units = phase.model.units
    # ResNet blocks: the first BN-ReLU of each block; the stem BN feeds the residual stream (kept whole)
    assert [u.name for u in units.units] == ["ResNetBlock_0/BatchNorm_0", "ResNetBlock_1/BatchNorm_0"]
    assert "bn_init" in units.skipped
    variables = jax.jit(lambda k: phase.model.init({"params": k}, jnp.zeros((2, 8, 8, 1))))(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda a: a + 0.3, variables["params"])
    s, lam = float(config.sparsity_s), float(config.sparsity_lambda)
    want = sum(
        lam * (jnp.sum(params[b]["BatchNorm_0"]["bias"]) + s * jnp.sum(jnp.abs(params[b]["BatchNorm_0"]["scale"])))
        for b in ("ResNetBlock_0", "ResNetBlock_1")
    )
    np.testing.assert_allclose(jax.jit(phase.regulariser)(params), want, rtol=1e-5)
    grads = jax.jit(jax.grad(phase.regulariser))(params)  # one compile, not one per primitive
    touched = {
        "/".join(str(k.key) for k in path)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
        if np.any(np.asarray(g) != 0)
    }
    assert touched == {f"ResNetBlock_{i}/BatchNorm_0/{leaf}" for i in (0, 1) for leaf in ("scale", "bias")}


# ---- bad input: one line naming the model, before any training -----------------------------------

BAD = [
    ("no_such_module_xyz:Model", "cannot import 'no_such_module_xyz'"),
    ("user_zoo:Missing", "has no attribute 'Missing'"),
    ("user_zoo:NOT_A_MODULE", "is a int, expected a Flax module class or a factory"),
    ("user_zoo:not_a_module", "returned a dict, not a Flax module"),
    ("user_zoo:WrongInput", "cannot be called on the dataset's images of shape (28, 28, 1)"),
    ("user_zoo", "is unknown: expected a built-in name ("),
]


@pytest.mark.parametrize("spec,cause", BAD, ids=[s for s, _ in BAD])
def test_bad_user_model_is_one_line_naming_it(spec, cause):
    config = user_config(spec)
    with pytest.raises(ValueError) as info:
        config_validation.validate(config, num_devices=1)
    message = str(info.value)
    assert "\n" not in message and f"config.model={spec!r}" in message and cause in message, message


def test_bad_user_model_through_the_launcher_creates_nothing(tmp_path):
    workdir = tmp_path / "run"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([TESTS, REPO, os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "train.py"),
            "--config=configs/fashion_mnist.py",
            "--config.model=user_zoo:WrongInput",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.model='user_zoo:WrongInput': cannot be called"), proc.stderr[-2000:]
    assert not workdir.exists()


def test_model_without_units_trains_and_says_nothing_can_be_pruned(tmp_path):
    config = user_config("user_zoo:NoUnits", num_epochs=1, lr_boundaries=())
    out = pipeline.run(config, str(tmp_path), "train,prune", dataset=SyntheticData())
    assert np.isfinite(out["train"]["train_metrics"]["loss"])
    assert "nothing can be pruned" in out["prune"]["units"]
    assert out["prune"]["kept_channels"] == {}


# ---- the whole pipeline ------------------------------------------------------------------------


def _check_every_phase(workdir, out):
    prune, ev, bench = out["prune"], out["evaluate"], out["benchmark"]
    assert sum(prune["kept_channels"].values()) < sum(prune["total_channels"].values()), prune
    assert ev["max_abs_logit_diff_before_finetune"] < 1e-4  # the reloaded artifact == the hard-masked network
    assert ev["trained_hard_masked_accuracy"] == ev["compact_accuracy_before_finetune"]
    assert "compact_accuracy_after_finetune" in ev
    assert bench["compact"]["macs"] < bench["dense"]["macs"] and bench["rows"][0]["compact"]["median_ms"] > 0
    report = out["report"]["pruning"]
    assert report["summary"]["macs_reduction_pct"] > 0
    assert os.path.exists(os.path.join(workdir, "widths.png"))
    with open(os.path.join(workdir, "report.md")) as f:
        text = f.read()
    assert "MACs before->after" in text
    # the final artifact reloads without the user's class and runs any batch size
    model, variables = artifact.load(os.path.join(workdir, "finetuned"))
    assert model.apply(variables, np.zeros((3, 8, 8, 1), np.float32)).shape == (3, 10)


@pytest.mark.parametrize("spec,parallel", [("user_zoo:resnet_tiny", "pmap"), ("user_zoo:CNN", "shard_map")])
def test_user_model_runs_every_phase(tmp_path, spec, parallel):
    workdir = str(tmp_path / "run")
    out = pipeline.run(user_config(spec, parallel=parallel), workdir, ALL, dataset=SyntheticData())
    _check_every_phase(workdir, out)


def test_damaged_artifact_is_an_export_error(tmp_path):
    config = user_config("user_zoo:CNN", num_epochs=1, lr_boundaries=())
    workdir = str(tmp_path / "run")
    pipeline.run(config, workdir, "train,prune", dataset=SyntheticData())
    damaged = str(tmp_path / "damaged")
    shutil.copytree(os.path.join(workdir, "compact"), damaged)
    with open(os.path.join(damaged, artifact.ARRAYS_FILE), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\xff\x00\xff")
    with pytest.raises(ExportError, match="missing or damaged"):
        artifact.load(damaged)


@pytest.mark.parametrize(
    "spec,method,call",
    [("user_zoo:Deterministic", "dense", "not deterministic"), ("user_zoo:CNN", "slimming", "train")],
)
def test_dense_and_slimming_train_and_cut_a_user_model(tmp_path, spec, method, call):
    config = user_config(spec, method=method, num_epochs=1, lr_boundaries=(), model_call=call)
    config.slimming.target_channel_ratio = 0.5
    out = pipeline.run(config, str(tmp_path), "train,prune,evaluate", dataset=SyntheticData())
    kept, total = out["prune"]["kept_channels"], out["prune"]["total_channels"]
    if method == "dense":
        assert kept == total and sum(total.values()) > 0
    else:
        assert sum(kept.values()) == pytest.approx(sum(total.values()) / 2, abs=1)
    assert out["evaluate"]["max_abs_logit_diff_before_finetune"] < 1e-4


def test_killed_run_resumes_exactly(tmp_path):
    config = user_config("user_zoo:CNN", num_train_examples=64)  # 4 steps per epoch, 2 epochs
    reference = pipeline.run(config, str(tmp_path / "a"), "train", dataset=SyntheticData())
    workdir = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, workdir, "train", dataset=SyntheticData(kill_at=6))
    pipeline.run(config, workdir, "train", dataset=SyntheticData())
    a = pipeline.trained_variables(config, str(tmp_path / "a"))
    b = pipeline.trained_variables(config, workdir)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert reference["train"]["steps"] == 8
    with open(os.path.join(workdir, "train.json")) as f:
        assert json.load(f)["steps"] == 8


# ---- BN with axis_name='batch' on several devices ----------------------------------------------------

DEVICES_CHILD = r"""
import json, sys, tempfile
import jax, numpy as np
sys.path[:0] = [TESTS_DIR, REPO]
from conftest import SyntheticData, tiny_config
from soft_prune_jax.pipeline import model_path
from soft_prune_jax.training.loop import fit

config = tiny_config(model="user_zoo:resnet_tiny", num_classes=10, num_epochs=1, lr_boundaries=(),
                     num_train_examples=32, sparsity_lambda=0.1)
config.model_kwargs = {}
out = {}
for name, parallel, devices in (("single", "pmap", 1), ("pmap", "pmap", 2), ("shard_map", "shard_map", 2)):
    config.parallel = parallel
    phase = model_path.training_phase(config, (8, 8, 1))
    result = fit(config, tempfile.mkdtemp(), phase, dataset=SyntheticData(), devices=jax.devices()[:devices])
    out[name] = jax.tree_util.tree_leaves(result.state.variables)
errors = {k: max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(out["single"], out[k]))
          for k in ("pmap", "shard_map")}
print("RESULT " + json.dumps({"devices": len(jax.devices()), "errors": errors}))
"""


def test_axis_name_batchnorm_and_masks_agree_on_two_devices_and_one():
    """The user's BN synchronises over the trainer's axis and every replica samples the same masks: two
    devices (pmap and shard_map) end where one device with the same global batch ends."""
    child = DEVICES_CHILD.replace("TESTS_DIR", repr(TESTS)).replace("REPO", repr(REPO))
    result = run_child(child, cwd=REPO, devices=2)
    assert result["devices"] == 2
    for name, error in result["errors"].items():
        assert error < 1e-4, (name, error)


def test_macs_from_the_graph_are_the_hand_count_and_the_jaxpr_count():
    """The per-layer count of the graph (what every phase reports) against arithmetic by hand: a 3x3
    conv 1 -> 6 (SAME, with bias) on 8x8 maps, then a dense layer 6 -> 10; and against the jaxpr count."""
    config = user_config("user_zoo:Deterministic", model_call="not deterministic")  # evaluates by default
    model, units = model_path.setup(config, (8, 8, 1))
    x = jnp.zeros((1, 8, 8, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    got = macs.count(units.analysis)
    assert [(r.path, r.macs, r.in_channels, r.out_channels) for r in got.layers] == [
        ("Conv_0", 8 * 8 * 9 * 1 * 6, 1, 6),
        ("Dense_0", 6 * 10, 6, 10),
    ]
    assert got.params == (9 * 6 + 6) + 2 * 6 + (6 * 10 + 10)  # conv, BN scale/bias, dense
    assert got.macs == flops.model_macs(model.module, variables, x, deterministic=True)


def test_nnx_model_called_with_rngs_gets_its_dropout_streams():
    """Flax's NNX MNIST CNN (``__call__(self, x, rngs)``): the pipeline supplies ``rngs``; dropout
    draws from the trainer's key in training and nothing in evaluation."""
    model = user.build("user_zoo:MnistCNN", 10, {})
    x = normal(0, (2, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    train = [model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(k)})[0] for k in (2, 3)]
    assert not np.allclose(train[0], train[1])
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    user.check_callable(model, (28, 28, 1))


def test_nnx_model_called_with_rngs_trains_and_cuts_exactly(tmp_path):
    config = user_config("user_zoo:MnistCNN", num_epochs=1, lr_boundaries=())
    data = SyntheticData(shape=(28, 28, 1))  # the example flattens 7 x 7 maps
    out = pipeline.run(config, str(tmp_path), "train,prune,evaluate", dataset=data)
    assert set(out["prune"]["total_channels"]) == {"batch_norm1", "batch_norm2"}
    assert out["evaluate"]["max_abs_logit_diff_before_finetune"] < 1e-4
