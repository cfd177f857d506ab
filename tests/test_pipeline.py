"""Config validation (table-driven) and the whole pipeline end to end on a tiny model.

The end-to-end run uses the synthetic in-memory dataset of conftest.py (a couple of epochs of
16 steps); the slow-marked test runs the launch script on real Fashion-MNIST with few examples.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from soft_prune_jax import pipeline
from soft_prune_jax.pipeline.workdir import load_model_dir
from soft_prune_jax.pruners import slimming
from soft_prune_jax.training import config_validation

from conftest import SyntheticData, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(config, dotted: str, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    return config


INVALID = [
    (
        "model",
        "vgg99",
        r"config.model='vgg99' is unknown: expected a built-in name \(densenet40, fmnist_cnn, .*vgg19\) "
        r"or a user model 'package.module:attribute'",
    ),
    ("dataset", "cifar11", r"config.dataset='cifar11' is unknown: did you mean cifar10"),
    ("method", "l0", r"config.method='l0' is invalid: expected one of dense, scp, slimming"),
    ("parallel", "xmap", r"config.parallel='xmap' is invalid: expected one of pmap, shard_map"),
    ("mask.tau", 0.0, r"tau=0.0 is invalid: expected a finite number > 0"),
    ("mask.tau", -0.5, r"tau=-0.5 is invalid"),
    ("mask.delta", 1.0, r"delta=1.0 is invalid: expected a number in \(0.0, 1.0\)"),
    ("mask.eps", 0.0, r"eps=0.0 is invalid"),
    ("sparsity_lambda", -1e-4, r"config.sparsity_lambda=-0.0001 is invalid: expected a number >= 0"),
    ("slimming.target_channel_ratio", 0.0, r"config.slimming.target_channel_ratio=0.0 is invalid"),
    ("batch_size", 12, r"config.batch_size=12 is not divisible by the 8 devices: expected a multiple of 8"),
    ("eval_batch_size", 20, r"config.eval_batch_size=20 is not divisible by the 8 devices"),
    ("batch_size", 0, r"config.batch_size=0 is invalid: expected an int >= 1"),
    ("num_epochs", 0, r"config.num_epochs=0 is invalid: expected an int >= 1"),
    ("finetune_epochs", -1, r"config.finetune_epochs=-1 is invalid: expected an int >= 0"),
    ("learning_rate", 0.0, r"config.learning_rate=0.0 is invalid: expected a number in \(0.0, inf\)"),
    ("lr_boundaries", (2, 1), r"config.lr_boundaries=\(2, 1\) is invalid: expected increasing epochs"),
    ("lr_boundaries", (5,), r"config.lr_boundaries=\(5,\) is invalid: .*num_epochs=2"),
    ("round_to", 0, r"config.round_to=0 is invalid: expected an int >= 1"),
    ("keep_checkpoints", 0, r"config.keep_checkpoints=0 is invalid"),
    ("benchmark_batch_sizes", (), r"config.benchmark_batch_sizes=\(\) is invalid"),
    ("num_classes", 4, r"config.num_classes=4 does not match dataset 'fashion_mnist': expected 10"),
]


@pytest.mark.parametrize("field,value,message", INVALID, ids=[f"{f}={v!r}" for f, v, _ in INVALID])
def test_invalid_config_is_one_clear_line(field, value, message):
    config = _set(tiny_config(), field, value)
    with pytest.raises(ValueError, match=message) as info:
        config_validation.validate(config, num_devices=8)
    assert "\n" not in str(info.value)


def test_imagenet_without_manual_dir_and_missing_fields(tmp_path):
    config = tiny_config(model="resnet50", dataset="imagenet2012", num_classes=1000, data_dir=str(tmp_path))
    config.model_kwargs = {}
    with pytest.raises(ValueError, match="config.manual_dir is not set"):
        config_validation.validate(config, num_devices=1)
    config = tiny_config()
    del config.seed
    with pytest.raises(ValueError, match="config lacks field"):
        config_validation.validate(config, num_devices=1)


def test_phase_names():
    assert pipeline.parse_phases("report,train") == ("train", "report")
    with pytest.raises(ValueError, match="phases='train,fit' is invalid"):
        pipeline.parse_phases("train,fit")


def test_slimming_masks_keep_the_global_top_scales():
    params = {
        "masked_bn0": {"scale": np.array([0.1, -0.9, 0.5, 0.05]), "bias": np.zeros(4)},
        "block": {"masked_bn1": {"scale": np.array([0.7, 0.2]), "bias": np.zeros(2)}},
        "head": {"kernel": np.ones((2, 2))},
    }
    masks = slimming.global_threshold_masks(params, 0.5)
    np.testing.assert_array_equal(masks["masked_bn0"], [0, 1, 1, 0])
    np.testing.assert_array_equal(masks["block/masked_bn1"], [1, 0])
    with pytest.raises(ValueError, match="target_channel_ratio=0"):
        slimming.global_threshold_masks(params, 0)


# ---------------------------------------------------------------------------------------------


def e2e_config(**overrides):
    # delta=0.49 puts the prune threshold c=0.51 next to q=Phi(0.05)=0.52 of a fresh channel, so a
    # couple of epochs already prune some channels and keep others.
    config = tiny_config(
        num_epochs=2,
        lr_boundaries=(1,),
        finetune_epochs=1,
        sparsity_lambda=1e-2,
        benchmark_batch_sizes=(8,),
        benchmark_runs=2,
        log_every_steps=8,
        validation_examples=8,
    )
    config.mask.delta = 0.49
    config.update(overrides)
    return config


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("e2e"))
    logger, lines = logging.getLogger("absl"), _Lines()
    level = logger.level
    logger.setLevel(logging.INFO)  # the progress lines are INFO (setLevel: the logger caches its levels)
    logger.addHandler(lines)
    try:
        results = pipeline.run(e2e_config(), workdir, dataset=SyntheticData(), devices=None)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    return workdir, results, report, lines.lines


def test_every_phase_leaves_its_outputs(e2e):
    workdir, results, _, _ = e2e
    assert set(results) == set(pipeline.PHASES)
    for name in (
        "config.json",
        "train.json",
        "prune.json",
        "finetune.json",
        "evaluate.json",
        "benchmark.json",
        "timings.json",
        "report.json",
        "report.md",
        "widths.png",
        "compact",
        "finetuned",
        "checkpoints/train",
        "checkpoints/finetune",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name


def test_report_fields(e2e):
    _, _, report, _ = e2e
    summary = report["pruning"]["summary"]
    assert 0 < summary["kept_channels"] < summary["total_channels"] == 12  # widths (4, M, 8)
    assert summary["compact_macs"] < summary["dense_macs"]
    assert report["prune"]["kept_channels"] == {w["path"]: w["after"] for w in report["pruning"]["widths"]}
    ev = report["evaluate"]
    assert ev["test_examples"] == 36
    # Surgery is exact: the compact network reproduces the hard-masked one.
    assert ev["max_abs_logit_diff_before_finetune"] < 1e-4
    assert ev["compact_accuracy_before_finetune"] == pytest.approx(ev["trained_hard_masked_accuracy"], abs=1e-9)
    assert 0.0 <= ev["compact_accuracy_after_finetune"] <= 1.0
    # 10 classes: top-5 is reported beside top-1 for every model, and the final one is the fine-tuned one.
    assert ev["trained_hard_masked_accuracy"] <= ev["trained_hard_masked_top5_accuracy"] <= 1.0
    assert ev["compact_top5_accuracy_before_finetune"] == pytest.approx(
        ev["trained_hard_masked_top5_accuracy"], abs=1e-9
    )
    assert ev["final_top5_accuracy"] == ev["compact_top5_accuracy_after_finetune"] >= ev["final_accuracy"]
    assert report["method_details"]["label"] == "SCP"
    assert report["method_details"]["settings"]["sparsity_lambda"] == 1e-2
    row = report["benchmark"]["rows"][0]
    assert row["batch_size"] == 8 and row["dense"]["median_ms"] > 0 and row["compact"]["median_ms"] > 0
    assert row["speedup"] == pytest.approx(row["dense"]["median_ms"] / row["compact"]["median_ms"])
    assert report["train"]["steps"] == 2 * 16 and report["finetune"]["steps"] == 16
    assert report["train"]["validation"]["count"] == 36  # evaluated after every epoch (synthetic: the test set)
    assert set(report["timings"]) == {"train", "prune", "finetune", "evaluate", "benchmark"}


def test_train_progress_shows_kept_channels_and_macs(e2e):
    """The SCP train phase's progress line names the units' kept channels and the kept-MACs ratio of the
    cut the hard masks give (``traced.progress_macs``): at the last step, the compact model prune made."""
    _, _, report, lines = e2e
    progress = [line for line in lines if line.startswith("train step ")]
    assert len(progress) == 4  # 32 steps, a line every 8
    found = re.search(r"step 32/32 .*\| kept channels (\d+)/12 .*\| MACs [\d.]+M \(([\d.]+)% of dense\)", progress[-1])
    assert found, progress[-1]
    summary = report["pruning"]["summary"]
    assert 0 < int(found.group(1)) <= summary["kept_channels"]  # prune may keep one more of an emptied layer
    assert float(found.group(2)) == pytest.approx(100 * summary["compact_macs"] / summary["dense_macs"], abs=0.051)


def test_markdown_report(e2e):
    workdir, _, report, _ = e2e
    text = open(os.path.join(workdir, "report.md")).read()
    assert text.startswith("# fmnist_cnn on fashion_mnist (SCP)\n")
    ev = report["evaluate"]
    assert (
        f"| test accuracy, compact after fine-tuning | {100 * ev['compact_accuracy_after_finetune']:.2f}% "
        f"(top-5 {100 * ev['compact_top5_accuracy_after_finetune']:.2f}%) |"
    ) in text
    assert (
        "| method settings | sparsity_lambda 0.01, sparsity_s 2, mask {delta 0.49, eps 0.05, k 20, tau 0.5} |" in text
    )


def test_network_slimming_through_the_pipeline(tmp_path):
    """Slimming trains without masks from BN scales 0.5, cuts by one global |scale| threshold, and the
    compact model reproduces the trained network under those masks exactly."""
    config = e2e_config(method="slimming", num_epochs=1, lr_boundaries=(), finetune_epochs=0, validation_examples=0)
    workdir = str(tmp_path)
    results = pipeline.run(config, workdir, "train,prune,evaluate,report", dataset=SyntheticData())
    prune = results["prune"]
    assert sum(prune["kept_channels"].values()) == 6  # target_channel_ratio 0.5 of 4 + 8
    ev = results["evaluate"]
    assert ev["max_abs_logit_diff_before_finetune"] < 1e-4
    assert ev["compact_accuracy_before_finetune"] == pytest.approx(ev["trained_hard_masked_accuracy"], abs=1e-9)
    details = results["report"]["method_details"]
    assert details == {
        "label": "Network Slimming",
        "keep_one_rule": "the lowest z = (eps - beta) / |gamma|",  # the cut ranks by z for every method
        "settings": {"l1": 1e-4, "scale_init": 0.5, "cut": "global |scale| threshold keeping 0.5 of the channels"},
    }
    compact, _ = load_model_dir(os.path.join(workdir, "compact"))
    assert (compact.spec["method"], compact.spec["source"]) == ("slimming", "prune")


def test_phases_rerun_alone_and_workdir_guard(e2e):
    workdir, results, _, _ = e2e
    # Training is finished: rerunning evaluate alone gives the same numbers without retraining.
    again = pipeline.run(e2e_config(log_every_steps=3), workdir, "evaluate", dataset=SyntheticData())
    assert again["evaluate"] == results["evaluate"]
    with pytest.raises(ValueError, match="holds a run of a different config"):
        pipeline.run(e2e_config(sparsity_lambda=0.5), workdir, "evaluate", dataset=SyntheticData())


@pytest.mark.slow
@pytest.mark.drift
def test_launch_on_real_fashion_mnist(tmp_path):
    """The absl entry point on real Fashion-MNIST (few examples) through shard_map: a report with real accuracy.
    SCP's fixed lambda (the demo's latency budget would cut 32 steps' network to the bone; test_latency.py)."""
    workdir = tmp_path / "fmnist"
    args = [
        sys.executable,
        os.path.join(REPO, "launch", "train.py"),
        "--config=configs/fashion_mnist.py:lambda",
        f"--workdir={workdir}",
        "--config.num_epochs=1",
        "--config.lr_boundaries=(1,)",
        "--config.num_train_examples=4096",
        "--config.num_eval_examples=500",
        "--config.eval_batch_size=250",
        "--config.log_every_steps=4",
        "--config.parallel=shard_map",
        # finetune and benchmark are covered by the synthetic end-to-end run above
        "--phases=train,prune,evaluate,report",
    ]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["evaluate"]["test_examples"] == 500
    assert report["evaluate"]["max_abs_logit_diff_before_finetune"] < 1e-3
    assert report["evaluate"]["trained_hard_masked_accuracy"] > 0.5  # 10 classes, 32 steps of batch 128


@pytest.mark.slow
def test_every_phase_on_mocked_cifar10(tmp_path):
    """The real input pipeline (tfds -> tf.data) on mocked CIFAR-10 through all six phases, with a tiny
    pre-activation ResNet: the CIFAR path a GPU user runs, minus the download."""
    import tensorflow_datasets as tfds

    config = e2e_config(
        model="resnet56",
        dataset="cifar10",
        num_train_examples=64,
        num_eval_examples=32,
        validation_examples=0,
        num_epochs=1,
        lr_boundaries=(),
        data_dir=str(tmp_path / "tfds"),
    )
    config.model_kwargs = {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8)}
    workdir = str(tmp_path / "cifar")
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        results = pipeline.run(config, workdir, devices=None)
    assert set(results) == set(pipeline.PHASES)
    report = json.loads(open(os.path.join(workdir, "report.json")).read())
    assert report["dataset"] == "cifar10" and report["evaluate"]["test_examples"] == 32
    assert report["evaluate"]["max_abs_logit_diff_before_finetune"] < 1e-4
    assert report["train"]["steps"] == 64 // 16 and report["finetune"]["steps"] == 64 // 16
    compact, _ = load_model_dir(os.path.join(workdir, "finetuned"))
    assert (compact.spec["model"], compact.spec["source"], compact.spec["input_shape"]) == (
        "resnet56",
        "finetune",
        [32, 32, 3],
    )


def test_the_benchmark_times_in_a_fresh_process_under_the_malloc_policy(e2e, tmp_path, monkeypatch):
    from soft_prune_jax.pipeline import fresh_timing

    source, _, _, _ = e2e
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)  # the module's e2e results stay as they are
    shape = SyntheticData().get_dataset_info(e2e_config()).input_shape
    timed = fresh_timing.time_pair(workdir, os.path.join(workdir, "finetuned"), shape, 10, [2, 4], runs=3)
    assert set(timed) == {2, 4}
    assert all(timed[b][name]["median_ms"] > 0 for b in timed for name in ("dense", "compact"))
    with pytest.raises(RuntimeError, match="in a fresh process failed: .*missing"):
        fresh_timing.time_pair(workdir, str(tmp_path / "missing"), shape, 10, [2], runs=1)
    assert not fresh_timing.needed({fresh_timing.ENV: "never"}) and fresh_timing.needed({fresh_timing.ENV: "always"})
    with pytest.raises(ValueError, match="SOFT_PRUNE_JAX_FRESH_TIMING='sometimes' is invalid"):
        fresh_timing.needed({fresh_timing.ENV: "sometimes"})
    monkeypatch.setenv(fresh_timing.ENV, "always")
    again = pipeline.run(e2e_config(), workdir, "benchmark", dataset=SyntheticData())
    assert again["benchmark"]["timed_in"] == "a fresh process (pipeline/fresh_timing.py)"
    assert [row["batch_size"] for row in again["benchmark"]["rows"]] == [8]
