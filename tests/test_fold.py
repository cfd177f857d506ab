"""BN folding for inference export is exact wherever it applies, for every architecture."""

import jax
import pytest

from soft_prune_jax.compact import export, surgery
from soft_prune_jax.compact.fold import fold_batchnorm

from conftest import TINY, assert_close, evaluate, tiny


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_folded_compact_model_equals_unfolded(name, fraction):
    model, variables, x = tiny(name)
    variables = surgery.randomize_bn(variables, 11, fraction)
    compact, compact_vars = surgery.prune(model, variables)
    folded, folded_vars = fold_batchnorm(compact, compact_vars)
    assert_close(evaluate(folded, folded_vars, x), evaluate(compact, compact_vars, x))
    stats = lambda v: len(jax.tree.leaves(v.get("batch_stats", {})))
    if name == "densenet40":  # nothing to fold: every BN reads a shared concatenation
        assert folded is compact
    else:
        assert folded.bn_folded and stats(folded_vars) <= stats(compact_vars)
        if fraction < 1.0:  # with every branch removed, a pre-activation net has nothing left to fold
            assert stats(folded_vars) < stats(compact_vars)
    if name in ("fmnist_cnn", "vgg16", "resnet18", "resnet50"):  # post-activation: every BN folds
        assert stats(folded_vars) == 0


def test_fold_refuses_masked_models_and_double_folding():
    model, variables, x = tiny("vgg16")
    with pytest.raises(ValueError, match="without masks"):
        fold_batchnorm(model, variables)
    compact, compact_vars = surgery.prune(model, surgery.randomize_bn(variables, 0, 0.5))
    folded, folded_vars = fold_batchnorm(compact, compact_vars)
    with pytest.raises(ValueError, match="already folded"):
        fold_batchnorm(folded, folded_vars)


def test_folded_export_reloads_to_the_same_outputs(tmp_path):
    model, variables, x = tiny("resnet56")
    compact, compact_vars = surgery.prune(model, surgery.randomize_bn(variables, 4, 0.5))
    path = export.save_compact(tmp_path / "folded", compact, compact_vars, fold_bn=True)
    loaded, loaded_vars = export.load_compact(path)
    assert loaded.bn_folded
    assert_close(evaluate(loaded, loaded_vars, x), evaluate(compact, compact_vars, x))
