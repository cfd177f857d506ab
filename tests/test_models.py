"""Model architectures: sizes (via jax.eval_shape) and where the masks sit (docs/method.md)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soft_prune_jax.method import masks as M
from soft_prune_jax.models import DenseNet, PreActBlock, PreActResNet, ResNet, ResNetBlock, get_model, model_names

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


@pytest.mark.parametrize(
    "name,expected,rel",
    [
        ("resnet56", preact_resnet_params(9, False), 0.0),
        ("resnet110", preact_resnet_params(18, False), 0.0),
        ("resnet164", preact_resnet_params(18, True), 0.0),
        ("resnet18", 11.7e6, 0.03),
        ("resnet50", 25.6e6, 0.03),
        ("resnet101", 44.5e6, 0.03),
        ("vgg16", 14.7e6, 0.03),
        ("densenet40", densenet40_params(), 0.0),
    ],
)
def test_full_size_parameter_counts(name, expected, rel):
    assert num_params(param_shapes(name)) == pytest.approx(expected, rel=rel)


def test_densenet40_hand_count_is_the_published_exact_count():
    # 1,059,298 is the exact size of Huang et al.'s DenseNet-40 (k = 12) that papers round to 1.0M.
    assert densenet40_params() == 1_059_298
    assert densenet40_params() == pytest.approx(1.0e6, rel=0.06)


@pytest.mark.parametrize(
    "name,count",
    [
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


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg17'") as info:
        get_model("vgg17", 10)
    for name in model_names():
        assert name in str(info.value)
    assert set(SPECS) <= set(model_names())


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10"])
def test_bad_num_classes_is_rejected(bad):
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet56", bad)


# ----------------------------------------------------------------------------------------------
# Tiny versions: every family runs forward in both modes, and compact widths build
# ----------------------------------------------------------------------------------------------

TINY = {
    "vgg": lambda **kw: get_model("vgg16", 5, widths=(4, "M", 6), **kw),
    "preact": lambda **kw: PreActResNet(stage_sizes=(2, 2), stage_widths=(4, 8), stem_width=4, num_classes=5, **kw),
    "preact_bottleneck": lambda **kw: PreActResNet(
        stage_sizes=(1, 2), stage_widths=(2, 4), stem_width=4, bottleneck=True, num_classes=5, **kw
    ),
    "densenet": lambda **kw: DenseNet(
        layers_per_block=2, num_blocks=2, growth_rate=3, stem_width=4, num_classes=5, **kw
    ),
    "resnet_imagenet": lambda **kw: ResNet(
        stage_sizes=(1, 1), stage_widths=(4, 8), bottleneck=True, num_classes=5, **kw
    ),
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_models_trace_in_both_modes(family):
    # Shapes only (jax.eval_shape): compiling five models would dominate the suite; test_layers
    # and the surgery tests run real forward passes.
    model = TINY[family]()
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)

    def run(x):
        variables = model.init(jax.random.key(1), x)
        logits_eval = model.apply(variables, x)
        logits_train, updates = model.apply(
            variables, x, train=True, rngs={"gumbel": jax.random.key(2)}, mutable=["batch_stats"]
        )
        return logits_eval, logits_train, variables["batch_stats"], updates["batch_stats"]

    logits_eval, logits_train, stats_before, stats_after = jax.eval_shape(run, x)
    assert logits_eval.shape == logits_train.shape == (2, 5)
    assert jax.tree_util.tree_structure(stats_before) == jax.tree_util.tree_structure(stats_after)
    assert jax.tree_util.tree_leaves(stats_after)


@functools.cache
def tiny_preact():
    """The tiny PreActResNet, its variables, and a jitted map params -> every block's output."""
    model = TINY["preact"]()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(1), x), x)
    # numpy-filled (compiling model.init's PRNG draws costs seconds); BN scale/var 1, bias/mean 0
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(
            np.ones(leaf.shape)
            if path[-1].key in ("scale", "var")
            else np.zeros(leaf.shape)
            if path[-1].key in ("bias", "mean")
            else rng.normal(0.0, 0.5, leaf.shape),
            leaf.dtype,
        ),
        shapes,
    )

    @jax.jit
    def block_outputs(params):
        _, state = model.apply(
            {**variables, "params": params}, x, capture_intermediates=True, mutable=["intermediates"]
        )
        return {k: v["__call__"][0] for k, v in state["intermediates"].items() if k.startswith("block")}

    return variables, block_outputs


@pytest.mark.parametrize("family", sorted(TINY))
def test_dense_baseline_has_the_same_parameter_tree(family):
    # mask=None changes only what the units do, never the names or shapes (checkpoints, surgery).
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    masked, dense = (jax.eval_shape(m.init, jax.random.key(0), x) for m in (TINY[family](), TINY[family](mask=None)))
    assert jax.tree_util.tree_structure(masked) == jax.tree_util.tree_structure(dense)
    assert [a.shape for a in jax.tree_util.tree_leaves(masked)] == [a.shape for a in jax.tree_util.tree_leaves(dense)]


def tiny_preact_eval(bias_overrides):
    """Evaluates the tiny PreActResNet with some masked BN biases overridden; returns block outputs."""
    variables, block_outputs = tiny_preact()
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])  # a copy we may edit
    for (block, layer), value in bias_overrides.items():
        params[block][layer]["bias"] = jnp.full_like(params[block][layer]["bias"], value)
    return block_outputs(params)


def test_block_whose_last_mask_is_all_zero_is_the_identity():
    out = tiny_preact_eval({("block1", "masked_bn2"): -20.0})
    np.testing.assert_array_equal(out["block1"], out["block0"])  # the branch adds exactly 0


def test_block_whose_first_mask_is_all_zero_still_adds_bn2_bias():
    # conv1 then reads only zeros, but BN2 turns them into relu(bias - mean * scale / std) > 0 and
    # conv2 maps that to a non-zero output: such a block is *not* removable (surgery must keep it).
    out = tiny_preact_eval({("block1", "masked_bn1"): -20.0, ("block1", "masked_bn2"): 1.0})
    assert np.any(out["block1"] != out["block0"])


def test_compact_widths_shrink_exactly_the_named_layers():
    model = PreActResNet(
        stage_sizes=(2, 2),
        stage_widths=(4, 8),
        stem_width=4,
        num_classes=5,
        block_widths=((3,), (0,), (8,), (5,)),
        block_reads=(None, None, None, (0, 2, 7)),
    )
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros((1, 8, 8, 3)))["params"]
    assert params["block0"]["conv1"]["kernel"].shape == (3, 3, 4, 3)
    assert params["block0"]["masked_bn2"]["scale"].shape == (3,)
    assert "block1" not in params  # inner width 0: the block is the identity, with no parameters
    assert params["block3"]["masked_bn1"]["scale"].shape == (3,)
    assert params["block3"]["conv1"]["kernel"].shape == (3, 3, 3, 5)
    assert params["block3"]["conv2"]["kernel"].shape == (3, 3, 5, 8)


def test_wrong_number_of_block_widths_is_rejected():
    model = PreActResNet(stage_sizes=(2, 2), stage_widths=(4, 8), stem_width=4, block_widths=((4,),) * 3)
    with pytest.raises(ValueError, match="block_widths"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros((1, 8, 8, 3)))


# ----------------------------------------------------------------------------------------------
# Shortcuts and stride-2 alignment (the reference's rules)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        PreActBlock(4, (4,), stride=2, first=True, projection=True, mask=None),
        ResNetBlock(4, (4,), stride=2, projection=True, mask=None),
    ],
    ids=["preact", "imagenet"],
)
def test_stride2_conv_reads_the_same_pixels_as_its_projection(block):
    # With centre-tap identity kernels a 3x3 stride-2 conv that pads (1, 1) reads pixels (2i, 2j),
    # as the 1x1 stride-2 projection does; XLA's SAME would pad (0, 1) and read (2i + 1, 2j + 1).
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


@pytest.mark.parametrize(
    "make",
    [
        lambda: PreActBlock(8, (4,), stride=2, first=True, projection=False),
        lambda: PreActBlock(8, (4,), stride=1, first=True, projection=False),
        lambda: PreActBlock(4, (4,), stride=1, first=False, projection=True),
        lambda: ResNetBlock(8, (4,), stride=1, projection=False),
    ],
)
def test_identity_shortcut_that_cannot_add_up_is_rejected(make):
    with pytest.raises(ValueError, match="shortcut"):
        jax.eval_shape(lambda x: make().init(jax.random.key(0), x), jnp.zeros((1, 8, 8, 4)))


def test_compact_imagenet_resnet_takes_a_smaller_stem_only_where_it_is_masked():
    bottleneck = ResNet(stage_sizes=(1, 1), stage_widths=(4, 8), bottleneck=True, num_classes=5, stem_width=3)
    params = jax.eval_shape(lambda x: bottleneck.init(jax.random.key(0), x), jnp.zeros((1, 32, 32, 3)))["params"]
    assert params["stem"]["kernel"].shape == (7, 7, 3, 3) and params["masked_bn_stem"]["scale"].shape == (3,)
    assert params["block0"]["conv1"]["kernel"].shape[-2] == params["block0"]["proj"]["kernel"].shape[-2] == 3
    basic = ResNet(stage_sizes=(1, 1), stage_widths=(64, 8), bottleneck=False, num_classes=5, stem_width=3)
    with pytest.raises(ValueError, match="stem_width=3"):
        jax.eval_shape(lambda x: basic.init(jax.random.key(0), x), jnp.zeros((1, 32, 32, 3)))
