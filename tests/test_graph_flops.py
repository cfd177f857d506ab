"""flops.model_macs counts any model prune_model accepts (linen, NNX) or returns, from its jaxpr."""

from graph_support import linen, nnx_module, randomize_linen

from soft_prune_jax import prune_model
from soft_prune_jax.measure import flops

from conftest import tiny


def test_traced_macs_equal_the_module_count_on_a_builtin_model():
    model, variables, x = tiny("resnet56")
    assert flops.model_macs(model, variables, x, train=False) == flops.count(model, variables, x.shape).macs


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
