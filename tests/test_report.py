"""The dense-vs-compact per-layer report (report.py): table, JSON, PNG plot."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soft_prune_jax.compact import surgery
from soft_prune_jax.measure import flops, report
from soft_prune_jax.method import masks as M
from soft_prune_jax.models import PreActResNet, get_model

CIFAR_TINY = (8, 8, 3)


def preact(**kwargs):
    return PreActResNet(stage_sizes=(2, 2), stage_widths=(4, 8), stem_width=4, num_classes=3, **kwargs)


@pytest.fixture(scope="module")
def resnet_report():
    """Block 1 removed (inner width 0), block 3 reads 3 of 8 stream channels and keeps 5 inner ones."""
    dense = flops.count(preact(), None, CIFAR_TINY)
    compact = flops.count(
        preact(block_widths=((4,), (0,), (8,), (5,)), block_reads=(None, None, None, (0, 2, 7))), None, CIFAR_TINY
    )
    return report.compare(dense, compact)


def test_removed_layer_shows_zero_after(resnet_report):
    rows = {row.path: row for row in resnet_report.layers}
    for path in ("block1/conv1", "block1/conv2"):
        row = rows[path]
        assert row.removed and (row.in_after, row.out_after, row.macs_after) == (0, 0, 0)
        assert row.macs_before == 8 * 8 * 9 * 4 * 4
    widths = {w.path: (w.before, w.after) for w in resnet_report.widths}
    assert widths["block1/masked_bn1"] == (4, 0) and widths["block1/masked_bn2"] == (4, 0)
    assert widths["block3/masked_bn1"] == (8, 3) and widths["block3/masked_bn2"] == (8, 5)
    assert not rows["block0/conv1"].removed


def test_kept_layers_show_their_new_widths_and_macs(resnet_report):
    rows = {row.path: row for row in resnet_report.layers}
    conv1 = rows["block3/conv1"]  # 4x4 outputs after the stride-2 stage
    assert (conv1.in_before, conv1.in_after, conv1.out_before, conv1.out_after) == (8, 3, 8, 5)
    assert (conv1.macs_before, conv1.macs_after) == (4 * 4 * 9 * 8 * 8, 4 * 4 * 9 * 3 * 5)
    summary = resnet_report.summary
    assert summary["compact_macs"] == sum(row.macs_after for row in resnet_report.layers)
    assert summary["kept_channels"] == sum(w.after for w in resnet_report.widths)


def test_table_lists_every_layer_and_the_totals(resnet_report):
    table = report.format_table(resnet_report)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["layer", "kind"]
    for row in resnet_report.layers:
        assert any(line.startswith(row.path) for line in lines), row.path
    assert "block1/conv1 (removed)" in table
    assert "4->0" in next(line for line in lines if line.startswith("block1/conv2"))
    pct = resnet_report.summary["macs_reduction_pct"]
    assert f"(-{pct:.2f}%)" in table and "FLOPs = 2 MACs" in table


def test_json_round_trips(resnet_report):
    text = report.to_json(resnet_report)
    data = json.loads(text)
    assert set(data) == {"summary", "layers", "widths"}
    assert len(data["layers"]) == len(resnet_report.layers)
    assert report.from_json(text) == resnet_report
    assert report.from_json(report.to_json(resnet_report, indent=None)) == resnet_report


def test_plot_writes_a_valid_png(resnet_report, tmp_path):
    import matplotlib.image

    path = report.plot_widths(str(tmp_path / "widths.png"), resnet_report, title="tiny")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_compact_model_with_foreign_layers_is_rejected():
    dense = flops.count(get_model("vgg16", 3, widths=(4, "M", 6)), None, CIFAR_TINY)
    bigger = flops.count(get_model("vgg16", 3, widths=(4, "M", 6, 6)), None, CIFAR_TINY)
    with pytest.raises(ValueError, match="lacks"):
        report.compare(dense, bigger)


def test_plot_without_masked_layers_is_rejected(tmp_path):
    empty = report.PruningReport(layers=(), widths=(), summary={})
    with pytest.raises(ValueError, match="no masked layers"):
        report.plot_widths(str(tmp_path / "x.png"), empty)


def test_report_of_a_surgically_pruned_vgg_matches_its_hard_masks():
    model = get_model("vgg16", 3, widths=(6, "M", 8))
    x = jax.ShapeDtypeStruct((1,) + CIFAR_TINY, jnp.float32)
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
    compact, compact_variables = surgery.prune(model, variables)
    rep = report.compare(flops.count(model, variables, CIFAR_TINY), flops.count(compact, compact_variables, CIFAR_TINY))
    kept = M.kept_channels(surgery.model_hard_masks(model, variables["params"]))
    assert (rep.summary["kept_channels"], rep.summary["total_channels"]) == (kept["kept"], kept["total"]) == (9, 14)
    assert [(w.path, w.after) for w in rep.widths] == [("masked_bn0", 3), ("masked_bn1", 6)]
    rows = {row.path: row for row in rep.layers}
    assert (rows["conv1"].in_after, rows["conv1"].out_after, rows["head"].in_after) == (3, 6, 6)
