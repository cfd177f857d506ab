"""round_to='auto' (compact/align.py): widths chosen from an injected latency table, never below the kept count."""

import json

import numpy as np
import pytest

from soft_prune_jax.compact import align, surgery
from soft_prune_jax.models import get_model

from conftest import assert_close, evaluate

VGG_WIDTHS = (24, "M", 40, 20)  # three masked units wide enough for candidates above their counts


def aligned(channels: int) -> int:
    """A fake device on which a channel count that is not a multiple of 8 costs double."""
    return channels if channels % 8 == 0 else 2 * channels


def blocky(shape: align.ConvShape) -> float:
    cin, cout = shape.kernel_shape[2:]
    return float(aligned(cin) * aligned(cout))


def linear(shape: align.ConvShape) -> float:
    cin, cout = shape.kernel_shape[2:]
    return float(cin * cout)


def model_and_variables(seed=3, fraction=0.55):
    model = get_model("vgg16", 10, widths=VGG_WIDTHS)
    return model, surgery.random_variables(model, (2, 8, 8, 3), seed, fraction)


def test_candidates():
    assert align.candidates(5, 64) == [5, 8, 12, 16]
    assert align.candidates(16, 64) == [16]
    assert align.candidates(30, 31) == [30, 31]
    assert align.candidates(0, 8) == [0]


def test_auto_pads_to_the_fastest_width_and_keeps_every_kept_channel():
    model, variables = model_and_variables()
    base = surgery.plan(model, variables, round_to=1)
    auto = surgery.plan(model, variables, round_to=align.Auto(latency=blocky, input_shape=(8, 8, 3)))
    for name, p in auto.items():
        kept, k = set(base[name].kept.tolist()), len(base[name].kept)
        assert kept <= set(p.kept.tolist())  # every channel the method kept is still there
        assert len(p.kept) in align.candidates(k, p.total)
        # each unit's convs cost aligned(width) times a constant: the fastest candidate is known
        options = align.candidates(k, p.total)
        assert len(p.kept) == options[int(np.argmin([aligned(c) for c in options]))]
    assert any(len(p.kept) > len(base[n].kept) for n, p in auto.items()), "the test needs one padded unit"
    linear_plan = surgery.plan(model, variables, round_to=align.Auto(latency=linear, input_shape=(8, 8, 3)))
    assert {n: len(p.kept) for n, p in linear_plan.items()} == {n: len(p.kept) for n, p in base.items()}


def test_auto_compact_model_is_exact():
    model, variables = model_and_variables(seed=5)
    auto = align.Auto(latency=blocky, input_shape=(8, 8, 3))
    compact, compact_vars = surgery.prune(model, variables, round_to=auto)
    rounded = surgery.masks_of(surgery.plan(model, variables, round_to=auto))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    assert_close(evaluate(compact, compact_vars, x), evaluate(model, variables, x, rounded))


def test_latency_table_measures_each_shape_once_per_device(tmp_path):
    calls = []

    def measure(shape):
        calls.append(shape)
        return 1.5

    path = str(tmp_path / "table.json")
    shape = align.ConvShape((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)))
    table = align.LatencyTable(path, measure)
    assert table(shape) == table(shape) == 1.5 and len(calls) == 1
    assert align.LatencyTable(path, measure)(shape) == 1.5 and len(calls) == 1  # read back from the file
    with open(path) as f:
        assert list(json.load(f)) == [f"{align.device_key()}|{shape.key()}"]


def test_bad_round_to_is_one_line_error():
    model, variables = model_and_variables()
    with pytest.raises(ValueError, match="round_to='fast' is invalid: expected an int >= 1 .* or 'auto'"):
        surgery.plan(model, variables, round_to="fast")


def test_config_round_to_takes_an_int_or_auto_and_rejects_the_rest():
    from soft_prune_jax.training import config_validation

    from conftest import tiny_config

    for good in (1, 8, "auto"):  # the default config's field is typed object: --config.round_to=auto parses
        config = tiny_config()
        config.round_to = good
        config_validation._validate_method(config)
    for bad in ("fast", 0, 2.0):
        config = tiny_config()
        config.round_to = bad
        with pytest.raises(ValueError, match=rf"config.round_to={bad!r} is invalid: expected an int >= 1 .* or 'auto'"):
            config_validation._validate_method(config)


def _trained(config, workdir):
    from soft_prune_jax.pipeline.workdir import trained_variables
    from soft_prune_jax.training import data
    from soft_prune_jax.training.experiment import create_model

    return create_model(config), trained_variables(config, workdir), data.DATASETS[config.dataset].input_shape


def test_pipeline_prunes_with_round_to_auto(tmp_path, monkeypatch):
    """train -> prune -> evaluate with config.round_to='auto' and a fake device on which wider convs are
    faster: every unit keeps its whole width (the counts of round_to=1 are below it) and the compact
    model reproduces the network hard-masked by the rounded masks."""
    from soft_prune_jax import pipeline
    from soft_prune_jax.pipeline import cut

    from conftest import SyntheticData, tiny_config

    monkeypatch.setattr(cut.align, "LatencyTable", lambda: lambda shape: 1.0 / np.prod(shape.kernel_shape[2:]))
    config = tiny_config(num_epochs=1, lr_boundaries=(), finetune_epochs=0, validation_examples=0, sparsity_lambda=1e-2)
    config.mask.delta = 0.49  # prunes some channels after one epoch (tests/test_pipeline.py's e2e_config)
    config.round_to = "auto"
    results = pipeline.run(config, str(tmp_path), "train,prune,evaluate", dataset=SyntheticData())
    assert results["prune"]["kept_channels"] == results["prune"]["total_channels"]
    config.round_to = 1
    masks = cut.effective_masks(config, *_trained(config, str(tmp_path)))
    assert any(not m.all() for m in masks.values())  # round_to=1 would have cut channels
    assert results["evaluate"]["max_abs_logit_diff_before_finetune"] < 1e-4
