"""A compact model of a user's class, exported as StableHLO + orbax arrays, runs where that class
cannot be imported; a damaged artifact is a one-line error naming the file."""

import os
import subprocess
import sys

import numpy as np
import pytest
from graph_support import close, linen, nnx_module, randomize_linen

from soft_prune_jax import prune_model
from soft_prune_jax.compact.export_stablehlo import ExportError, export_compact, load_exported

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_linen_export_runs_without_the_model_code(tmp_path):
    model, variables, x = linen("resnet_pre")
    variables = randomize_linen(variables, 0, 0.5)
    compact, compact_vars = prune_model(model, variables, x, train=False)
    export_compact(compact, compact_vars, x, str(tmp_path / "m"))
    np.save(tmp_path / "x.npy", np.asarray(x))
    np.save(tmp_path / "want.npy", np.asarray(model.apply(variables, x, train=False)))
    # A fresh interpreter whose path has the package but not the tests folder (the zoo classes).
    code = (
        "import sys, numpy as np; from soft_prune_jax.compact.export_stablehlo import load_exported;"
        "assert 'zoo_linen' not in sys.modules;"
        f"y = load_exported({str(tmp_path / 'm')!r})(np.load({str(tmp_path / 'x.npy')!r}));"
        f"np.save({str(tmp_path / 'got.npy')!r}, np.asarray(y))"
    )
    env = {**os.environ, "PYTHONPATH": _REPO}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), env=env, timeout=300)
    close(np.load(tmp_path / "got.npy"), np.load(tmp_path / "want.npy"))


def test_nnx_export_roundtrip(tmp_path):
    module, x = nnx_module("cnn")
    compact = prune_model(module, x)
    export_compact(compact, None, x, str(tmp_path / "n"))
    close(load_exported(str(tmp_path / "n"))(x), module(x))


def test_damaged_artifact_is_a_clear_error(tmp_path):
    module, x = nnx_module("cnn")
    export_compact(prune_model(module, x), None, x, str(tmp_path / "n"))
    artifact = tmp_path / "n" / "model.stablehlo"
    artifact.write_bytes(artifact.read_bytes()[:100])
    with pytest.raises(ExportError, match="model.stablehlo: not a valid jax.export artifact") as err:
        load_exported(str(tmp_path / "n"))
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="spec.json"):
        load_exported(str(tmp_path / "missing"))
