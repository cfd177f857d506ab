"""The dense-vs-compact per-layer report (report.py) of two counts of the traced graph (traced.macs):
table, JSON, PNG plot."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soft_prune_jax import prune_model
from soft_prune_jax.measure import width_report as report
from soft_prune_jax.measure.flops import FlopCount, LayerCount
from soft_prune_jax.traced import macs

from conftest import tiny_model

CIFAR_TINY = (8, 8, 3)


@pytest.fixture(scope="module")
def vgg_report():
    """A tiny VGG-16 (6, M, 8) whose units have 3 of 6 and 2 of 8 channels dead, cut by prune_model."""
    model = tiny_model("vgg16", widths=(6, "M", 8))
    x = jnp.zeros((2,) + CIFAR_TINY)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            np.ones(leaf.shape, np.float32)
            if path[-1].key in ("scale", "var")
            else np.zeros(leaf.shape, np.float32)
            if path[-1].key == "mean"
            else rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
        ),
        shapes,
    )
    variables["params"]["masked_bn0"]["bias"] = np.array([-5, 1, -5, 1, 1, -5], np.float32)  # 3 of 6 dead
    variables["params"]["masked_bn1"]["bias"] = np.array([1, -5, 1, 1, 1, 1, -5, 1], np.float32)  # 2 of 8
    compact, _ = prune_model(model, variables, x, train=False)
    return report.compare(macs.count(compact.program.analysis), macs.of_compact(compact))


def test_report_of_a_cut_vgg_matches_its_hard_masks(vgg_report):
    rep = vgg_report
    assert (rep.summary["kept_channels"], rep.summary["total_channels"]) == (9, 14)
    assert [(w.path, w.before, w.after) for w in rep.widths] == [("masked_bn0", 6, 3), ("masked_bn1", 8, 6)]
    rows = {row.path: row for row in rep.layers}
    assert list(rows) == ["conv0", "conv1", "head"]
    conv1 = rows["conv1"]  # 4x4 outputs after the pool
    assert (conv1.in_before, conv1.in_after, conv1.out_before, conv1.out_after) == (6, 3, 8, 6)
    assert (conv1.macs_before, conv1.macs_after) == (4 * 4 * 9 * 6 * 8, 4 * 4 * 9 * 3 * 6)
    assert (rows["head"].in_after, rows["conv0"].out_after) == (6, 3)
    assert rep.summary["compact_macs"] == sum(row.macs_after for row in rep.layers)
    assert rep.summary["dense_macs"] == sum(row.macs_before for row in rep.layers)
    assert not any(row.removed for row in rep.layers)


def _row(path, c_in, c_out, macs_):
    return LayerCount(path, "conv", c_in, c_out, (3, 3), (4, 4), macs_, 0)


def test_removed_layer_shows_zero_after():
    """A layer the compact count lacks (or counts at 0 MACs) is removed: 0 channels and MACs after."""
    dense = FlopCount((_row("a", 3, 4, 100), _row("b", 4, 4, 200)), 10, {"g": 4}, CIFAR_TINY)
    compact = FlopCount((_row("a", 3, 2, 50),), 5, {"g": 2}, CIFAR_TINY)
    rep = report.compare(dense, compact)
    rows = {row.path: row for row in rep.layers}
    assert rows["b"].removed and (rows["b"].in_after, rows["b"].out_after, rows["b"].macs_after) == (0, 0, 0)
    assert not rows["a"].removed and rows["a"].macs_after == 50
    assert "b (removed)" in report.format_table(rep)


def test_table_lists_every_layer_and_the_totals(vgg_report):
    table = report.format_table(vgg_report)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["layer", "kind"]
    for row in vgg_report.layers:
        assert any(line.startswith(row.path) for line in lines), row.path
    assert "6->3" in next(line for line in lines if line.startswith("conv1"))
    pct = vgg_report.summary["macs_reduction_pct"]
    assert f"(-{pct:.2f}%)" in table and "FLOPs = 2 MACs" in table


def test_json_round_trips(vgg_report):
    text = report.to_json(vgg_report)
    data = json.loads(text)
    assert set(data) == {"summary", "layers", "widths"}
    assert len(data["layers"]) == len(vgg_report.layers)
    assert report.from_json(text) == vgg_report
    assert report.from_json(report.to_json(vgg_report, indent=None)) == vgg_report


def test_plot_writes_a_valid_png(vgg_report, tmp_path):
    import matplotlib.image

    path = report.plot_widths(str(tmp_path / "widths.png"), vgg_report, title="tiny")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_counts_of_different_graphs_are_rejected():
    dense = FlopCount((_row("a", 3, 4, 100),), 10, {"g": 4}, CIFAR_TINY)
    with pytest.raises(ValueError, match="layers the dense one lacks"):
        report.compare(dense, FlopCount((_row("a", 3, 4, 100), _row("z", 4, 4, 1)), 10, {"g": 4}, CIFAR_TINY))
    with pytest.raises(ValueError, match="channel groups the dense one lacks"):
        report.compare(dense, FlopCount((_row("a", 3, 4, 100),), 10, {"h": 4}, CIFAR_TINY))
    with pytest.raises(ValueError, match="different inputs"):
        report.compare(dense, FlopCount((_row("a", 3, 4, 100),), 10, {"g": 4}, (4, 4, 3)))


def test_plot_without_masked_layers_is_rejected(tmp_path):
    empty = report.PruningReport(layers=(), widths=(), summary={})
    with pytest.raises(ValueError, match="no masked layers"):
        report.plot_widths(str(tmp_path / "x.png"), empty)
