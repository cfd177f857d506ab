"""The built-in architectures as written (models/): full-size parameter counts and paths (via
jax.eval_shape: nothing is allocated), where the paper's masks sit (docs/method.md, "Where the masks
sit": the ``masked_bn*`` BNs), the registry's errors and backend defaults, and the CPU formulations
(``fast_conv.Conv``) against XLA's convs. Their cut on the traced path: tests/test_builtin_cut.py."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from graph_support import close

from soft_prune_jax.compact.prune_model import channel_groups
from soft_prune_jax.models import (
    AXIS_NAME,
    VGG,
    PreActBlock,
    ResNetBlock,
    common,
    get_model,
    model_names,
)
from soft_prune_jax.ops import fast_conv, pooling
from soft_prune_jax.scp import masks as M

from conftest import TINY, tiny_model

CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)
SPECS = {  # name: (num_classes, input shape)
    "vgg16": (10, CIFAR),
    "vgg19": (10, CIFAR),
    "resnet56": (10, CIFAR),
    "resnet110": (10, CIFAR),
    "resnet164": (10, CIFAR),
    "densenet40": (10, CIFAR),
    "resnet18": (1000, IMAGENET),
    "resnet34": (1000, IMAGENET),
    "resnet50": (1000, IMAGENET),
    "resnet101": (1000, IMAGENET),
    "fmnist_cnn": (10, (28, 28, 1)),
}
ON_CPU = jax.default_backend() == "cpu"


@functools.cache
def param_shapes(name, **kwargs):
    """The full-size params tree as ShapeDtypeStructs: nothing is allocated or computed."""
    num_classes, shape = SPECS[name]
    model = get_model(name, num_classes, **kwargs)
    x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


def num_params(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def widths(name):
    """{masked layer path: channels its mask acts on}."""
    return {path: layer["scale"].shape[0] for path, layer in M.masked_layers(param_shapes(name)).items()}


def vgg_params(widths, in_channels=3, num_classes=10):
    """A plain VGG counted by hand: bias-free 3x3 convs, BN (scale + bias) after each, dense head."""
    total, c = 0, in_channels
    for w in (w for w in widths if w != "M"):
        total, c = total + 9 * c * w + 2 * w, w
    return total + c * num_classes + num_classes


def densenet40_params():
    """Huang et al.'s DenseNet-40 (k = 12, no compression) counted by hand: 1,059,298 (papers say 1.0M)."""
    reads = [24 + 12 * i for i in range(12)] + [168 + 12 * i for i in range(12)] + [312 + 12 * i for i in range(12)]
    layers = sum(2 * c + 9 * c * 12 for c in reads)  # BN + 3x3 conv to k channels
    transitions = sum(2 * c + c * c for c in (168, 312))  # BN + 1x1 conv, no compression
    return 3 * 3 * 3 * 24 + layers + transitions + 2 * 456 + 456 * 10 + 10


def preact_resnet_params(blocks_per_stage, bottleneck):
    """The reference's pre-activation CIFAR ResNet counted by hand (BN: scale + bias per channel).

    The first block of a stage has one BN-ReLU shared with its shortcut, which is a 1x1 conv only
    where the stride or the width changes (ResNet-56/110: stages 2 and 3; ResNet-164: every stage).
    """
    total, stream = 3 * 3 * 3 * 16, 16  # stem
    for stage, inner in enumerate((16, 32, 64)):
        out = 4 * inner if bottleneck else inner
        for i in range(blocks_per_stage):
            if bottleneck:
                total += 2 * stream + stream * inner + 2 * inner + 9 * inner * inner + 2 * inner + inner * out
            else:
                total += 2 * stream + 9 * stream * inner + 2 * inner + 9 * inner * out
            if i == 0 and (stage > 0 or stream != out):
                total += stream * out  # 1x1 projection
            stream = out
    return total + 2 * stream + stream * 10 + 10  # final BN, head


def test_preact_hand_counts():
    # ResNet-56 without the stage-1 projection: 16 * 16 = 256 parameters fewer than with it.
    assert preact_resnet_params(9, False) == 855_578
    assert preact_resnet_params(18, False) == 1_730_522
    assert preact_resnet_params(18, True) == 1_703_258


def test_vgg_hand_counts_are_the_published_sizes():
    assert vgg_params(get_model("vgg16", 10).widths) == pytest.approx(14.7e6, rel=0.01)
    assert vgg_params(get_model("vgg19", 10).widths) == pytest.approx(20.0e6, rel=0.01)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet56", preact_resnet_params(9, False)),
        ("resnet110", preact_resnet_params(18, False)),
        ("resnet164", preact_resnet_params(18, True)),
        ("densenet40", densenet40_params()),
        ("vgg16", vgg_params((64, 64, 128, 128, 256, 256, 256) + (512,) * 6)),
        ("vgg19", vgg_params((64, 64, 128, 128) + (256,) * 4 + (512,) * 8)),
        ("fmnist_cnn", vgg_params((32, 32, 64, 64, 128), in_channels=1)),
        # torchvision's counts of the same networks (BN included)
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
    ],
)
def test_full_size_parameter_counts(name, expected):
    assert num_params(param_shapes(name)) == expected


def test_every_builtin_has_a_count_and_a_tiny_version():
    assert set(model_names()) == set(SPECS) == set(TINY)


def test_densenet40_hand_count_is_the_published_exact_count():
    # 1,059,298 is the exact size of Huang et al.'s DenseNet-40 (k = 12) that papers round to 1.0M.
    assert densenet40_params() == 1_059_298
    assert densenet40_params() == pytest.approx(1.0e6, rel=0.06)


@pytest.mark.parametrize(
    "name,count",
    [
        ("fmnist_cnn", 5),
        ("vgg16", 13),
        ("vgg19", 16),
        ("resnet56", 52),
        ("resnet110", 106),
        ("resnet164", 160),
        ("densenet40", 39),
        ("resnet18", 8),
        ("resnet34", 16),
        ("resnet50", 33),
        ("resnet101", 67),
    ],
)
def test_number_of_masked_layers(name, count):
    assert len(widths(name)) == count


def test_vgg16_masks_every_conv_output():
    params = param_shapes("vgg16")
    conv_widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert widths("vgg16") == {f"masked_bn{i}": w for i, w in enumerate(conv_widths)}
    for i, w in enumerate(conv_widths):
        assert params[f"conv{i}"]["kernel"].shape[-1] == w  # the mask sits on this conv's outputs
    assert set(params) == {f"conv{i}" for i in range(13)} | set(widths("vgg16")) | {"head"}


@pytest.mark.parametrize(
    "name,blocks_per_stage,bottleneck", [("resnet56", 9, False), ("resnet110", 18, False), ("resnet164", 18, True)]
)
def test_preact_resnet_mask_placement(name, blocks_per_stage, bottleneck):
    params, found = param_shapes(name), widths(name)
    expected = {}
    for b in range(3 * blocks_per_stage):
        stage, first = divmod(b, blocks_per_stage)[0], b % blocks_per_stage == 0
        inner = (16, 32, 64)[stage]
        stream = inner * 4 if bottleneck else inner
        block = params[f"block{b}"]
        if first:  # shares its BN-ReLU with the shortcut: unmasked bn1, no mask1
            assert "bn1" in block and "masked_bn1" not in block
            # a 1x1 projection only where the stride (stages 2, 3) or the width (16 -> 64) changes
            assert ("proj" in block) == (stage > 0 or bottleneck)
        else:
            assert "bn1" not in block and "proj" not in block
            expected[f"block{b}/masked_bn1"] = stream  # mask1 selects what conv1 reads of the stream
            assert block["conv1"]["kernel"].shape[-2] == stream
        convs = 3 if bottleneck else 2
        for j in range(2, convs + 1):  # each inner mask: conv_{j-1} outputs = conv_j inputs
            expected[f"block{b}/masked_bn{j}"] = inner
            assert block[f"conv{j - 1}"]["kernel"].shape[-1] == inner
            assert block[f"conv{j}"]["kernel"].shape[-2] == inner
        assert block[f"conv{convs}"]["kernel"].shape[-1] == stream  # residual stream: never masked
    expected["masked_bn_final"] = 256 if bottleneck else 64
    assert found == expected


def test_resnet56_mask_kinds():
    names = list(widths("resnet56"))
    assert sum(n.endswith("masked_bn2") for n in names) == 27
    assert sum(n.endswith("masked_bn1") for n in names) == 24
    assert "masked_bn_final" in names


def test_densenet40_masks_every_consumers_input():
    params = param_shapes("densenet40")
    reads = (
        [24 + 12 * i for i in range(12)]
        + [168]
        + [168 + 12 * i for i in range(12)]
        + [312]
        + [312 + 12 * i for i in range(12)]
        + [456]
    )
    assert widths("densenet40") == {f"masked_bn{u}": c for u, c in enumerate(reads)}
    for u, c in enumerate(reads[:-1]):  # every masked unit feeds exactly its own conv
        kernel = params[f"conv{u}"]["kernel"].shape
        assert kernel[-2] == c
        assert kernel[-1] == (c if u in (12, 25) else 12)  # transitions keep the width; layers add k


@pytest.mark.parametrize(
    "name,stage_sizes,bottleneck",
    [
        ("resnet18", (2, 2, 2, 2), False),
        ("resnet34", (3, 4, 6, 3), False),
        ("resnet50", (3, 4, 6, 3), True),
        ("resnet101", (3, 4, 23, 3), True),
    ],
)
def test_imagenet_resnet_masks_block_internal_units_and_a_projected_stem(name, stage_sizes, bottleneck):
    params, found = param_shapes(name), widths(name)
    expected, b = {}, 0
    if bottleneck:  # the stem feeds only block0's conv1 and projection (64 -> 256): a chain unit
        expected["masked_bn_stem"] = 64
        assert "bn_stem" not in params and params["stem"]["kernel"].shape[-1] == 64
        assert params["block0"]["conv1"]["kernel"].shape[-2] == params["block0"]["proj"]["kernel"].shape[-2] == 64
    else:  # identity shortcut: the stem's output is stage 1's residual stream, unmasked
        assert "bn_stem" in params and "proj" not in params["block0"]
    for stage, size in enumerate(stage_sizes):
        inner = (64, 128, 256, 512)[stage]
        for _ in range(size):
            block = params[f"block{b}"]
            internal = (1, 2) if bottleneck else (1,)
            for j in internal:
                expected[f"block{b}/masked_bn{j}"] = inner
                assert block[f"conv{j}"]["kernel"].shape[-1] == inner
            last = len(internal) + 1
            assert f"bn{last}" in block and f"masked_bn{last}" not in block  # the stream stays whole
            assert block[f"conv{last}"]["kernel"].shape[-1] == (4 * inner if bottleneck else inner)
            b += 1
    assert found == expected


def test_unknown_model_name_is_one_line_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg17'") as info:
        get_model("vgg17", 10)
    assert "\n" not in str(info.value)
    for name in model_names():
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_num_classes_is_one_line_naming_the_value(bad):
    with pytest.raises(ValueError, match=rf"^num_classes={bad!r} is invalid: expected an int >= 1$"):
        get_model("resnet56", bad)


# ----------------------------------------------------------------------------------------------
# The registry's swap points: what get_model fills for the backend in use, and what it equals
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_backend_defaults(name):
    """BN synchronised over the trainer's axis everywhere; on a CPU the formulations measured faster
    there (``fast_conv.Conv``, VGG's ``max_pool_2x2``), elsewhere XLA's own; ``conv=`` overrides."""
    model = get_model(name, 10)
    assert model.norm.func is nn.BatchNorm and model.norm.keywords == {"axis_name": AXIS_NAME} == {"axis_name": "batch"}
    assert model.conv is (fast_conv.Conv if ON_CPU else nn.Conv)
    if isinstance(model, VGG):
        assert model.pool is (pooling.max_pool_2x2 if ON_CPU else common.max_pool_2x2)
    else:
        assert not hasattr(model, "pool")
    assert get_model(name, 10, conv=nn.Conv).conv is nn.Conv
    assert get_model(name, 10, norm=nn.BatchNorm).norm is nn.BatchNorm


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_models_trace_in_both_modes(name):
    # Shapes only (jax.eval_shape): evaluation, and training with the running statistics updated.
    model = tiny_model(name)
    _, shape, classes = TINY[name]
    x = jax.ShapeDtypeStruct(shape, jnp.float32)

    def run(x):
        variables = model.init(jax.random.key(1), x)
        logits_eval = model.apply(variables, x)
        logits_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits_eval, logits_train, variables["batch_stats"], updates["batch_stats"]

    logits_eval, logits_train, stats_before, stats_after = jax.eval_shape(run, x)
    assert logits_eval.shape == logits_train.shape == (shape[0], classes)
    assert jax.tree_util.tree_structure(stats_before) == jax.tree_util.tree_structure(stats_after)
    assert jax.tree_util.tree_leaves(stats_after)


def numpy_variables(model, x, seed=0):
    """Variables with the model's shapes filled by NumPy (compiling ``model.init``'s PRNG draws costs
    seconds per model): He-normal kernels, random BN affine parameters and running statistics."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0.0, np.sqrt(2.0 / max(1, math.prod(leaf.shape[:-1]))), leaf.shape).astype(np.float32)
        low, high = {"scale": (0.5, 1.5), "var": (0.5, 2.0), "bias": (-0.5, 0.5), "mean": (-0.3, 0.3)}[name]
        return rng.uniform(low, high, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x))


@pytest.mark.parametrize("name", ["fmnist_cnn", "resnet164", "densenet40", "resnet50"])  # one per family
def test_cpu_formulations_equal_xla_convs(name):
    """``conv=fast_conv.Conv`` and VGG's ``pool=max_pool_2x2`` (the CPU defaults, whatever the backend
    here) against XLA's convs and Flax's max-pool: the same variables, outputs and prunable groups."""
    _, shape, _ = TINY[name]
    vgg = name == "fmnist_cnn"
    cpu = tiny_model(name, conv=fast_conv.Conv, **({"pool": pooling.max_pool_2x2} if vgg else {}))
    xla = tiny_model(name, conv=nn.Conv, **({"pool": common.max_pool_2x2} if vgg else {}))
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    variables = numpy_variables(xla, x)
    abstract = jax.eval_shape(lambda x: cpu.init(jax.random.key(0), x), x)
    assert jax.tree.map(np.shape, abstract) == jax.tree.map(np.shape, variables)
    close(jax.jit(cpu.apply)(variables, x), jax.jit(xla.apply)(variables, x))
    groups = lambda m: sorted(g.name for g in channel_groups(m, variables, x) if g.prunable)  # noqa: E731
    assert groups(cpu) == groups(xla) and groups(xla)


# batch 2: the case where autodiff of jnp.max once lost window gradients under jit (ops/pooling.py)
@pytest.mark.parametrize("batch", [2, 8])
def test_cpu_formulations_train_with_xla_gradients(batch):
    """The CPU defaults (``fast_conv.Conv``, ``max_pool_2x2``) in a training step -- jitted, batch
    statistics -- give every parameter the gradient XLA's conv and Flax's max-pool give."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(batch, 12, 12, 1)), jnp.float32)
    grads = []
    for conv, pool in ((fast_conv.Conv, pooling.max_pool_2x2), (nn.Conv, common.max_pool_2x2)):
        model = get_model("fmnist_cnn", 10, widths=(8, "M", 12), conv=conv, pool=pool, norm=nn.BatchNorm)
        variables = numpy_variables(model, x)

        def loss(params, x, model=model, variables=variables):
            logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.square(logits))

        grads.append(jax.jit(jax.grad(loss))(variables["params"], x))
    jax.tree.map(close, *grads)


# ----------------------------------------------------------------------------------------------
# Stride-2 alignment (the reference's padding): a block's 3x3 conv and its projection read one grid
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", [nn.Conv, fast_conv.Conv], ids=["xla", "fast_conv"])
@pytest.mark.parametrize(
    "block",
    [
        lambda conv, norm: PreActBlock(4, 4, False, conv, norm, stride=2, first=True, projection=True),
        lambda conv, norm: ResNetBlock(4, 4, False, conv, norm, stride=2, projection=True),
    ],
    ids=["preact", "imagenet"],
)
def test_stride2_conv_reads_the_same_pixels_as_its_projection(block, conv):
    # With centre-tap identity kernels a 3x3 stride-2 conv that pads (1, 1) reads pixels (2i, 2j),
    # as the 1x1 stride-2 projection does; XLA's SAME would pad (0, 1) and read (2i + 1, 2j + 1).
    block = block(conv, functools.partial(nn.BatchNorm, use_running_average=True))
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 4)) + 0.1
    variables = block.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["conv1"]["kernel"] = np.zeros((3, 3, 4, 4), np.float32)
    params["conv1"]["kernel"][1, 1] = np.eye(4)
    params["proj"]["kernel"] = np.eye(4, dtype=np.float32)[None, None]
    _, state = block.apply({**variables, "params": params}, x, capture_intermediates=True, mutable=["intermediates"])
    conv1, proj = (state["intermediates"][name]["__call__"][0] for name in ("conv1", "proj"))
    assert conv1.shape == proj.shape == (1, 4, 4, 4)
    np.testing.assert_allclose(conv1, proj, rtol=1e-6)
    assert not np.allclose(conv1[0, 0, 0], proj[0, 1, 1])  # the pixels differ, so the check can fail
