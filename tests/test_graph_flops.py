"""flops.model_macs counts any model prune_model accepts (linen, NNX) or returns, from its jaxpr."""

from graph_support import linen, nnx_module, randomize_linen

from soft_prune_jax import prune_model
from soft_prune_jax.measure import flops
from soft_prune_jax.traced import macs

from conftest import tiny


def test_jaxpr_macs_equal_the_graph_count_on_a_builtin_model():
    """Two counters of one convention agree: the jaxpr of the model as it runs (``fast_conv`` may emit
    im2col matmuls) and the per-layer count of the graph every phase reports (``traced.macs``)."""
    model, variables, x = tiny("resnet56")
    compact, compact_vars = prune_model(model, variables, x, train=False)
    assert flops.model_macs(model, variables, x, train=False) == macs.count(compact.program.analysis).macs
    assert flops.model_macs(compact, compact_vars, x, train=False) == macs.of_compact(compact).macs


def test_compact_models_count_fewer_macs():
    model, variables, x = linen("resnet_post")
    variables = randomize_linen(variables, 0, 0.5)
    compact, compact_vars = prune_model(model, variables, x, train=False)
    assert flops.model_macs(compact, compact_vars, x, train=False) < flops.model_macs(model, variables, x, train=False)
    module, x = nnx_module("cnn")
    # by hand: conv1 3x3x3->6 and conv2 3x3x6->8 on 6x6 outputs (SAME), then Linear 72->5
    dense = 6 * 6 * 9 * 3 * 6 + 6 * 6 * 9 * 6 * 8 + 72 * 5
    assert flops.model_macs(module, x) == dense
    assert flops.model_macs(prune_model(module, x), x) < dense
