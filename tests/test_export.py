"""Export and reload of compact models: same outputs, and every kind of bad directory is a clear error."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from soft_prune_jax.compact import export, surgery
from soft_prune_jax.models import get_model


def evaluate(model, variables, x):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


@pytest.fixture(scope="module")
def compact():
    model = get_model("resnet56", 10, stage_sizes=(2, 2, 2), stage_widths=(8, 16, 16))
    x = np.random.RandomState(0).randn(2, 16, 16, 3).astype(np.float32)
    variables = surgery.random_variables(model, x.shape, 0, 0.5)
    cm, cv = surgery.prune(model, variables, round_to=2)
    return cm, cv, x


@pytest.fixture()
def saved(compact, tmp_path):
    cm, cv, _ = compact
    return export.save_compact(tmp_path / "compact", cm, cv, extra={"macs": 123})


def test_roundtrip_same_model_and_outputs(compact, saved):
    cm, cv, x = compact
    model, variables = export.load_compact(saved)
    assert model == cm
    np.testing.assert_array_equal(evaluate(model, variables, x), evaluate(cm, cv, x))
    assert export.read_spec(saved)["extra"] == {"macs": 123}


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("densenet40", dict(num_blocks=2, layers_per_block=2, growth_rate=4, stem_width=6), (1, 8, 8, 3)),
        ("fmnist_cnn", dict(widths=(8, "M", 12)), (1, 12, 12, 1)),
        ("resnet50", dict(stage_sizes=(1, 1, 1, 1), stage_widths=(4, 8, 8, 8)), (1, 32, 32, 3)),
    ],
)
def test_roundtrip_other_architectures(name, kwargs, shape, tmp_path):
    model = get_model(name, 5, **kwargs)
    x = np.random.RandomState(1).randn(*shape).astype(np.float32)
    variables = surgery.random_variables(model, x.shape, 1, 0.4)
    cm, cv = surgery.prune(model, variables)
    loaded, lv = export.load_compact(export.save_compact(tmp_path / name, cm, cv))
    np.testing.assert_array_equal(evaluate(loaded, lv, x), evaluate(cm, cv, x))


def test_never_overwrites_without_asking(compact, saved):
    cm, cv, _ = compact
    before = open(os.path.join(saved, export.SPEC_FILE)).read()
    with pytest.raises(export.ExportError, match="already exists"):
        export.save_compact(saved, cm, cv)
    assert open(os.path.join(saved, export.SPEC_FILE)).read() == before
    export.save_compact(saved, cm, cv, overwrite=True, extra={"macs": 7})
    assert export.read_spec(saved)["extra"] == {"macs": 7}
    assert not glob.glob(saved + ".tmp-*") and not os.path.exists(saved + ".old")


def test_failed_save_leaves_nothing_behind(compact, tmp_path):
    cm, cv, _ = compact
    wrong = jax.tree.map(lambda a: a, cv)
    wrong["params"]["head"]["kernel"] = np.zeros((3, 10), np.float32)
    with pytest.raises(export.ExportError, match="do not fit"):
        export.save_compact(tmp_path / "bad", cm, wrong)
    assert os.listdir(tmp_path) == []


def test_missing_and_corrupt_spec(saved, tmp_path):
    with pytest.raises(export.ExportError, match="not a directory"):
        export.load_compact(tmp_path / "nowhere")
    spec_path = os.path.join(saved, export.SPEC_FILE)
    text = open(spec_path).read()
    open(spec_path, "w").write(text[: len(text) // 2])
    with pytest.raises(export.ExportError, match="corrupt"):
        export.load_compact(saved)
    os.remove(spec_path)
    with pytest.raises(export.ExportError, match="missing"):
        export.load_compact(saved)


def test_other_architecture_and_mismatched_widths(saved):
    with pytest.raises(export.ExportError, match="expected a DenseNet"):
        export.load_compact(saved, expect_class="DenseNet")
    spec_path = os.path.join(saved, export.SPEC_FILE)
    spec = json.load(open(spec_path))
    spec["model"]["kwargs"]["block_widths"][0] = [5]  # claims another width than the arrays have
    json.dump(spec, open(spec_path, "w"))
    with pytest.raises(export.ExportError, match="do not match the widths"):
        export.load_compact(saved)
    spec["model"]["class"] = "Transformer"
    json.dump(spec, open(spec_path, "w"))
    with pytest.raises(export.ExportError, match="unknown model class 'Transformer'"):
        export.load_compact(saved)


def _data_files(directory):
    files = [
        f
        for f in glob.glob(os.path.join(directory, export.ARRAYS_DIR, "**", "d", "*"), recursive=True)
        if os.path.isfile(f)
    ]
    assert files, "the orbax checkpoint layout changed: no data files found"
    return sorted(files, key=os.path.getsize)


def test_truncated_arrays_are_refused(saved):
    biggest = _data_files(saved)[-1]
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    with pytest.raises(export.ExportError):
        export.load_compact(saved)


def test_flipped_bytes_are_refused(saved):
    biggest = _data_files(saved)[-1]
    data = bytearray(open(biggest, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(biggest, "wb").write(bytes(data))
    with pytest.raises(export.ExportError):
        export.load_compact(saved)


def test_deleted_arrays_are_refused(saved):
    import shutil

    shutil.rmtree(os.path.join(saved, export.ARRAYS_DIR))
    with pytest.raises(export.ExportError, match="cannot be read"):
        export.load_compact(saved)
