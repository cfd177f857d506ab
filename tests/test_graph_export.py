"""A compact model of a user's class, saved as a jax.export artifact (StableHLO) beside its arrays,
runs where that class cannot be imported and on any batch size; a damaged artifact is a one-line
error naming the file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from graph_support import close, linen, nnx_module, param_count, randomize_linen

from soft_prune_jax import load_artifact, prune_model, save_artifact
from soft_prune_jax.compact import artifact
from soft_prune_jax.compact.artifact import ExportError

from conftest import normal, tiny

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_linen_export_runs_without_the_model_code(tmp_path):
    model, variables, x = linen("resnet_pre")
    variables = randomize_linen(variables, 0, 0.5)
    compact, compact_vars = prune_model(model, variables, x, train=False)
    save_artifact(str(tmp_path / "m"), compact, compact_vars, x)
    x3 = np.concatenate([np.asarray(x), np.asarray(x)[:1]])  # another batch size than the sample's
    np.save(tmp_path / "x.npy", x3)
    np.save(tmp_path / "want.npy", np.asarray(model.apply(variables, x3, train=False)))
    # A fresh interpreter whose path has the package but not the tests folder (the zoo classes).
    code = (
        "import sys, numpy as np; from soft_prune_jax import load_artifact;"
        f"model, v = load_artifact({str(tmp_path / 'm')!r});"
        "assert 'zoo_linen' not in sys.modules;"
        f"np.save({str(tmp_path / 'got.npy')!r}, np.asarray(model.apply(v, np.load({str(tmp_path / 'x.npy')!r}))))"
    )
    env = {**os.environ, "PYTHONPATH": _REPO}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), env=env, timeout=300)
    close(np.load(tmp_path / "got.npy"), np.load(tmp_path / "want.npy"))


def test_an_artifact_is_exported_with_convs_for_any_batch_size(tmp_path, monkeypatch):
    # the export traces one example; 'auto' would choose im2col for batch-1 shapes, slow at batch 64
    model, variables, x = tiny("fmnist_cnn")
    compact, compact_vars = prune_model(model, variables, x, train=False)
    chosen = []
    choose = artifact.fast_conv.choose_formulation
    monkeypatch.setattr(
        artifact.fast_conv, "choose_formulation", lambda *a, **k: chosen.append(k or a[4:]) or choose(*a, **k)
    )
    save_artifact(str(tmp_path / "m"), compact, compact_vars, x)
    assert chosen and all(c in ((True,), {"any_batch": True}) for c in chosen)
    assert compact.program.formulation == "auto"  # restored after the export
    loaded, loaded_vars = load_artifact(str(tmp_path / "m"))
    close(loaded.apply(loaded_vars, x), compact.apply(compact_vars, x, train=False))


def test_nnx_export_roundtrip(tmp_path):
    module, x = nnx_module("cnn")
    compact = prune_model(module, x)
    save_artifact(str(tmp_path / "n"), compact, None, x)
    model, variables = load_artifact(str(tmp_path / "n"))
    close(model.apply(variables, x), module(x))
    with pytest.raises(ValueError, match=r"the artifact takes \(batch, "):
        model.apply(variables, np.zeros((2, 3), np.float32))


def _saved(tmp_path):
    module, x = nnx_module("cnn")
    return save_artifact(str(tmp_path / "n"), prune_model(module, x), None, x)


def test_damaged_artifact_is_a_clear_error(tmp_path):
    directory = _saved(tmp_path)
    function = os.path.join(directory, artifact.FUNCTION_FILE)
    with open(function, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ExportError, match="apply.jax_export is missing or damaged") as err:
        load_artifact(directory)
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="model.json cannot be read"):
        load_artifact(str(tmp_path / "missing"))
    with pytest.raises(ExportError, match="exists: pass overwrite=True"):
        _saved(tmp_path)


def test_foreign_and_retired_formats_are_refused(tmp_path):
    directory = _saved(tmp_path)
    spec_path = os.path.join(directory, artifact.SPEC_FILE)
    with open(spec_path) as f:
        spec = json.load(f)
    with open(spec_path, "w") as f:
        json.dump({**spec, "format": "something/else"}, f)
    with pytest.raises(ExportError, match="has format 'something/else'"):
        load_artifact(directory)
    retired = tmp_path / "old"
    retired.mkdir()
    (retired / "spec.json").write_text(json.dumps({"format": "soft_prune_jax.exported/1"}))
    with pytest.raises(ExportError, match="retired fixed-batch export"):
        load_artifact(str(retired))


def test_earlier_user_model_artifacts_still_load(tmp_path):
    """The user-model format had the same files and calling convention; only its name differs."""
    directory = _saved(tmp_path)
    spec_path = os.path.join(directory, artifact.SPEC_FILE)
    with open(spec_path) as f:
        spec = json.load(f)
    spec.pop("input_dtype")
    with open(spec_path, "w") as f:
        json.dump({**spec, "format": "soft_prune_jax.user_compact/1"}, f)
    model, variables = load_artifact(directory)
    x = normal(2, (1,) + tuple(spec["input_shape"]))
    assert model.apply(variables, x).shape[0] == 1


def test_a_builtin_exports_and_equals_its_dense_model(tmp_path):
    """A built-in architecture takes the same traced cut and export; its dropped channels are dead
    (scale 0, bias -100 before a ReLU), so the loaded artifact reproduces the dense model."""
    model, variables, x = tiny("fmnist_cnn")
    compact, compact_vars = prune_model(model, variables, x, train=False)
    assert param_count(compact_vars) < param_count(variables)
    save_artifact(str(tmp_path / "b"), compact, compact_vars, x)
    loaded, loaded_vars = load_artifact(str(tmp_path / "b"))
    close(loaded.apply(loaded_vars, x), model.apply(variables, x, train=False))
