"""User-style models that hunt prune_model's defects (tests/test_prune_zoo.py), written the ways people
write Flax: depthwise convs with channel multipliers, grouped convs, channel and pixel shuffles,
split/add/concat patterns, repeat/tile, transposing reshapes, vmap/scan/remat ensembles, SE and CBAM
attention, the common activations after a BN, BN variants, several outputs, non-array call
arguments, and NNX versions. ``LINEN`` is name -> (body, call args after x, expects a cut);
``NNX`` is name -> (constructor(rngs), call args after x, expects a cut). Every model takes
``(2, 8, 8, 4)`` NHWC images and is tiny, so the whole zoo runs in seconds.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

SHAPE = (2, 8, 8, 4)


def bn(x, **kw):
    return nn.BatchNorm(use_running_average=True, **kw)(x)


def cbr(x, c, k=3, act=nn.relu, **bn_kw):
    """conv -> BN -> activation: the unit SCP masks (when the activation is a ReLU)."""
    return act(bn(nn.Conv(c, (k, k), use_bias=False)(x), **bn_kw))


def head(x):
    return nn.Dense(3)(x.mean((1, 2)))


def shuffle(x, g):
    n, h, w, c = x.shape
    return x.reshape(n, h, w, g, c // g).transpose(0, 1, 2, 4, 3).reshape(n, h, w, c)


def depth_to_space_tf(x, r):  # TensorFlow's order: channels as (r, r, C')
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * r, w * r, c // (r * r))


def depth_to_space_torch(x, r):  # PyTorch's pixel_shuffle order: channels as (C', r, r)
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, c // (r * r), r, r).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(n, h * r, w * r, c // (r * r))


def se(x, r=2):
    c = x.shape[-1]
    s = nn.relu(nn.Dense(max(1, c // r))(x.mean((1, 2))))
    return x * nn.sigmoid(nn.Dense(c)(s))[:, None, None, :]


def cbam(x, r=2):
    c = x.shape[-1]
    mlp1, mlp2 = nn.Dense(max(1, c // r)), nn.Dense(c)
    att = nn.sigmoid(mlp2(nn.relu(mlp1(x.mean((1, 2))))) + mlp2(nn.relu(mlp1(x.max((1, 2))))))
    x = x * att[:, None, None, :]
    spatial = jnp.concatenate([x.mean(-1, keepdims=True), x.max(-1, keepdims=True)], -1)
    return x * nn.sigmoid(nn.Conv(1, (3, 3))(spatial))


def depthwise(x, mult, act=nn.relu):
    c = x.shape[-1]
    return act(bn(nn.Conv(c * mult, (3, 3), feature_group_count=c, use_bias=False)(x)))


class Kernel(nn.Module):
    """A bare weight, for layers written by hand with lax / einsum."""

    shape: tuple

    @nn.compact
    def __call__(self):
        return self.param("kernel", nn.initializers.lecun_normal(), self.shape)


def _nchw_conv_bn_relu(x, c):
    """A PyTorch-style layer: NCHW conv and BatchNorm(axis=1)."""
    w = Kernel((3, 3, x.shape[1], c))()
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "HWIO", "NCHW"))
    return nn.relu(nn.BatchNorm(use_running_average=True, axis=1)(y))


ACTIVATIONS = {
    "relu": (nn.relu, True),
    "relu6": (nn.relu6, True),
    "hard_tanh_clip": (lambda x: jnp.clip(x, 0.0, 6.0), True),
    "gelu": (nn.gelu, False),
    "silu": (nn.silu, False),
    "leaky_relu": (nn.leaky_relu, False),
    "elu": (nn.elu, False),
    "hard_swish": (nn.hard_swish, False),
    "softplus": (nn.softplus, False),
    "tanh": (jnp.tanh, False),
    "sigmoid": (nn.sigmoid, False),
    "celu": (nn.celu, False),
}


def _activation_body(act):
    return lambda x: head(cbr(cbr(x, 6, act=act), 5, act=act))


def _ensemble(x):
    Ens = nn.vmap(nn.Conv, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, axis_size=3)
    return head(Ens(5, (3, 3))(cbr(x, 6)).mean(0))


def _scan(x):
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return cbr(h, h.shape[-1]), None

    Scan = nn.scan(Block, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True}, length=2)
    h, _ = Scan()(cbr(x, 6), None)
    return head(h)


def _remat(x):
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            return cbr(cbr(h, 6), 5)

    return head(nn.remat(Block)()(x))


def _jax_vmap_heads(x):
    """Two linear heads as one stacked kernel under jax.vmap (a batched dot_general)."""
    pooled = cbr(cbr(x, 6), 5).mean((1, 2))
    return jax.vmap(lambda w: pooled @ w)(Kernel((2, 5, 3))()).sum(0)


def _vmap_conv(x):
    """jax.vmap over a stack of conv kernels (JAX's conv batching rule: a transposing reshape)."""
    u = cbr(x, 6)
    ws = Kernel((3, 3, 3, 6, 5))()
    y = jax.vmap(
        lambda w: jax.lax.conv_general_dilated(u, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )(ws)
    return head(y.mean(0))


def _inception(x):
    a = cbr(x, 4, k=1)
    b = cbr(cbr(x, 3, k=1), 4)
    c = cbr(nn.max_pool(x, (3, 3), (1, 1), "SAME"), 3, k=1)
    return head(cbr(jnp.concatenate([a, b, c], -1), 5))


def _densenet(x):
    h = cbr(x, 6)
    for _ in range(2):
        h = jnp.concatenate([h, cbr(h, 3)], -1)
    return head(h)


def _shufflenet(x):
    h = cbr(x, 8)
    a, b = jnp.split(h, 2, axis=-1)
    b = cbr(depthwise(cbr(b, 4, k=1), 1, act=lambda y: y), 4, k=1)
    return head(cbr(shuffle(jnp.concatenate([a, b], -1), 2), 5))


def _preact(x):
    h = nn.Conv(6, (3, 3))(x)
    y = nn.Conv(6, (3, 3))(nn.relu(bn(h)))
    y = nn.Conv(6, (3, 3))(nn.relu(bn(y)))
    return head(nn.relu(bn(h + y)))


def _postact(x):
    h = cbr(x, 6)
    y = bn(nn.Conv(6, (3, 3), use_bias=False)(cbr(h, 5)))
    return head(nn.relu(h + y))


def _two_outputs(x):
    h = cbr(cbr(x, 6), 5)
    return head(h), nn.Dense(2)(h.max((1, 2)))


def _dict_outputs(x):
    h = cbr(cbr(x, 6), 5)
    return {"logits": head(h), "features": h.mean((1, 2))}


def _flags(x, flag, mode, nothing, options):
    h = cbr(x, 6)
    if flag and mode == "wide" and nothing is None and options["depth"] == 2:
        h = cbr(h, 5)
    return head(h)


def _literals(x):
    u = cbr(x, 6)
    u = u * jnp.ones((6,)) + jnp.zeros_like(u)
    u = nn.avg_pool(u, (3, 3), padding="SAME", count_include_pad=False)
    return head(cbr(u, 5))


def _ones_like_bias(x):
    u = cbr(x, 6)
    return head(cbr(u + jnp.ones_like(u), 5))


def _einsum_1x1(x):
    u = cbr(x, 6)
    return head(nn.relu(jnp.einsum("nhwc,cd->nhwd", u, Kernel((6, 5))())))


def _dense_bn(x):
    h = nn.relu(bn(nn.Dense(8)(x.reshape(x.shape[0], -1))))
    return nn.Dense(3)(nn.relu(bn(nn.Dense(6)(h))))


def _flatten_head(x):
    h = cbr(nn.max_pool(cbr(x, 6), (2, 2), (2, 2)), 5)
    return nn.Dense(3)(h.reshape(h.shape[0], -1))


def _nchw_flatten(x):
    h = cbr(x, 6).transpose(0, 3, 1, 2)
    return nn.Dense(3)(h.reshape(h.shape[0], -1))


def _order_f(x):
    h = cbr(x, 6)
    return nn.Dense(3)(jnp.reshape(h, (h.shape[0], -1), order="F"))


def _order_f_conv(x):
    h = cbr(x, 6)
    h = jnp.reshape(jnp.reshape(h, (h.shape[0], -1), order="F"), h.shape, order="F")
    return head(cbr(h, 5))


def _nchw_bn(x):
    h = _nchw_conv_bn_relu(x.transpose(0, 3, 1, 2), 6)
    return nn.Dense(3)(h.mean((2, 3)))


LINEN: dict[str, tuple[Callable, tuple, bool]] = {
    # depthwise with channel multipliers, grouped convs
    "depthwise_m1": (lambda x: head(cbr(depthwise(cbr(x, 6), 1), 5, k=1)), (), True),
    "depthwise_m2": (lambda x: head(cbr(depthwise(cbr(x, 4), 2), 5, k=1)), (), True),
    "depthwise_m3": (lambda x: head(cbr(depthwise(cbr(x, 4), 3), 5, k=1)), (), True),
    "depthwise_m2_no_bn_before": (lambda x: head(cbr(depthwise(nn.Conv(4, (1, 1))(x), 2), 5, k=1)), (), True),
    "grouped_g2": (lambda x: _grouped(x, 2), (), True),
    "grouped_g4": (lambda x: _grouped(x, 4), (), True),
    # shuffles
    "shuffle_g2": (lambda x: head(cbr(shuffle(cbr(x, 8), 2), 5)), (), True),
    "shuffle_g4": (lambda x: head(cbr(shuffle(cbr(x, 8), 4), 5)), (), True),
    "shufflenet_unit": (_shufflenet, (), True),
    "pixel_shuffle_tf": (lambda x: head(cbr(depth_to_space_tf(cbr(x, 8), 2), 5)), (), True),
    "pixel_shuffle_torch": (lambda x: head(cbr(depth_to_space_torch(cbr(x, 8), 2), 5)), (), True),
    # split / add / concat
    "split_add": (lambda x: head(cbr(sum(jnp.split(cbr(x, 8), 2, axis=-1)), 5)), (), True),
    "split3_add": (lambda x: head(cbr(sum(jnp.split(cbr(x, 9), 3, axis=-1)), 5)), (), True),
    "split_swap_concat": (lambda x: head(cbr(jnp.concatenate(jnp.split(cbr(x, 8), 2, -1)[::-1], -1), 5)), (), True),
    "split_branches": (lambda x: _split_branches(x), (), True),
    "concat_two_units": (lambda x: head(cbr(jnp.concatenate([cbr(x, 4), cbr(x, 5, k=1)], -1), 5)), (), True),
    "inception": (_inception, (), True),
    "densenet": (_densenet, (), True),
    "residual_post": (_postact, (), True),
    "residual_pre": (_preact, (), True),
    "add_two_units": (lambda x: head(cbr(cbr(x, 6) + cbr(x, 6, k=1), 5)), (), True),
    "mul_two_units": (lambda x: head(cbr(cbr(x, 6) * cbr(x, 6, k=1), 5)), (), True),
    # repeat / tile / pad / slices
    "repeat_channels": (lambda x: head(cbr(jnp.repeat(cbr(x, 4), 2, axis=-1), 5)), (), True),
    "tile_channels": (lambda x: head(cbr(jnp.tile(cbr(x, 4), (1, 1, 1, 2)), 5)), (), True),
    "repeat_spatial": (lambda x: head(cbr(jnp.repeat(cbr(x, 6), 2, axis=1), 5)), (), True),
    "pad_channels": (lambda x: head(cbr(jnp.pad(cbr(x, 4), ((0, 0), (0, 0), (0, 0), (1, 1))), 5)), (), True),
    "slice_channels": (lambda x: head(cbr(cbr(x, 8)[..., :5], 5)), (), True),
    "strided_channels": (lambda x: head(cbr(cbr(x, 8)[..., ::2], 5)), (), True),
    "flip_channels": (lambda x: head(cbr(jnp.flip(cbr(x, 6), -1), 5)), (), True),
    "roll_channels": (lambda x: head(cbr(jnp.roll(cbr(x, 6), 1, -1), 5)), (), True),
    # reshapes
    "flatten_head": (_flatten_head, (), True),
    "nchw_flatten": (_nchw_flatten, (), True),
    "order_f_flatten": (_order_f, (), True),
    "order_f_roundtrip": (_order_f_conv, (), True),
    # ensembles and lifted transforms
    "vmap_conv_ensemble": (_ensemble, (), True),
    "scan_blocks": (_scan, (), True),
    "remat_block": (_remat, (), True),
    "jax_vmap_heads": (_jax_vmap_heads, (), True),
    "jax_vmap_conv": (_vmap_conv, (), True),
    # attention
    "squeeze_excite": (lambda x: head(cbr(se(cbr(x, 6)), 5)), (), True),
    "cbam": (lambda x: head(cbr(cbam(cbr(x, 6)), 5)), (), True),
    "se_on_depthwise": (lambda x: head(cbr(se(depthwise(cbr(x, 4), 2)), 5, k=1)), (), True),
    # BN variants
    "bn_no_scale": (lambda x: head(cbr(cbr(x, 6, use_scale=False), 5)), (), True),
    "bn_no_bias": (lambda x: head(cbr(cbr(x, 6, use_bias=False), 5)), (), True),
    "bn_axis1_nchw": (_nchw_bn, (), True),
    "bn_after_dense": (_dense_bn, (), True),
    # several outputs, non-array call arguments, literals
    "two_outputs": (_two_outputs, (), True),
    "dict_outputs": (_dict_outputs, (), True),
    "flags_and_none": (_flags, (True, "wide", None, {"depth": 2}), True),
    "literals": (_literals, (), True),
    "ones_like": (_ones_like_bias, (), True),
    # other layers
    "einsum_1x1": (_einsum_1x1, (), True),
    "max_pool_between": (lambda x: head(cbr(nn.max_pool(cbr(x, 6), (2, 2), (2, 2)), 5)), (), True),
    "dilated": (lambda x: head(nn.relu(bn(nn.Conv(5, (3, 3), kernel_dilation=2)(cbr(x, 6))))), (), True),
    "conv_transpose": (lambda x: head(nn.ConvTranspose(5, (2, 2), (2, 2))(cbr(x, 6))), (), True),
    "layer_norm": (lambda x: head(cbr(nn.LayerNorm()(cbr(x, 6)), 5)), (), True),
    "group_norm": (lambda x: head(cbr(nn.GroupNorm(num_groups=2)(cbr(x, 6)), 5)), (), True),
    "softmax_channels": (lambda x: head(cbr(nn.softmax(cbr(x, 6), -1), 5)), (), True),
    "shared_conv_twice": (lambda x: _shared_conv(x), (), True),
    "two_heads": (lambda x: (lambda u: head(u) + nn.Dense(3)(u.max((1, 2))))(cbr(cbr(x, 6), 5)), (), True),
}
LINEN.update({f"act_{name}": (_activation_body(act), (), unit) for name, (act, unit) in ACTIVATIONS.items()})


def _grouped(x, g):
    return head(cbr(nn.relu(bn(nn.Conv(8, (3, 3), feature_group_count=g, use_bias=False)(cbr(x, 8)))), 5, k=1))


def _split_branches(x):
    a, b = jnp.split(cbr(x, 8), 2, axis=-1)
    return head(cbr(jnp.concatenate([cbr(a, 3), b], -1), 5))


def _shared_conv(x):
    conv = nn.Conv(6, (3, 3), use_bias=False)
    u = nn.relu(bn(conv(cbr(x, 6))))
    return head(nn.relu(bn(conv(u))))


class Body(nn.Module):
    """A linen model whose ``__call__`` is ``body`` (submodules are created inline, as in @nn.compact)."""

    body: Callable[..., Any]

    @nn.compact
    def __call__(self, x, *args):
        return self.body(x, *args)


# ---- NNX ---------------------------------------------------------------------------------------


class ConvBN(nnx.Module):
    def __init__(self, cin, cout, rngs, k=3, groups=1, act=nnx.relu, **bn_kw):
        self.conv = nnx.Conv(cin, cout, (k, k), feature_group_count=groups, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, rngs=rngs, **bn_kw)
        self.act = act

    def __call__(self, x):
        return self.act(self.bn(self.conv(x)))


class NnxNet(nnx.Module):
    """stem ConvBN -> ``middle`` (a function of the stem output and the module) -> ConvBN -> head."""

    def __init__(self, rngs, mid_in, mid_out, middle, stem=8, layers=None, act=nnx.relu, **bn_kw):
        self.stem = ConvBN(4, stem, rngs, act=act, **bn_kw)
        self.layers = nnx.List(layers(rngs) if layers else [])
        self.middle = middle
        self.last = ConvBN(mid_out, 5, rngs, k=1, act=act)
        self.head = nnx.Linear(5, 3, rngs=rngs)
        del mid_in

    def __call__(self, x):
        h = self.middle(self, self.stem(x))
        return self.head(self.last(h).mean((1, 2)))


def _nnx(mid_out, middle, layers=None, **kw):
    return lambda rngs: NnxNet(rngs, None, mid_out, middle, layers=layers, **kw)


class NnxSE(nnx.Module):
    def __init__(self, c, rngs):
        self.fc1, self.fc2 = nnx.Linear(c, c // 2, rngs=rngs), nnx.Linear(c // 2, c, rngs=rngs)

    def __call__(self, x):
        return x * nnx.sigmoid(self.fc2(nnx.relu(self.fc1(x.mean((1, 2))))))[:, None, None, :]


class NnxMnist(nnx.Module):
    """Flax's NNX MNIST example CNN (``__call__(self, x, rngs)``, dropout from ``rngs``) at toy width."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(4, 6, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(6, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(6, 8, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(8, rngs=rngs)
        self.linear1 = nnx.Linear(2 * 2 * 8, 16, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs):
        pool = lambda y: nnx.avg_pool(y, window_shape=(2, 2), strides=(2, 2))  # noqa: E731
        x = pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


class NnxTwoOutputs(nnx.Module):
    def __init__(self, rngs):
        self.a, self.b = ConvBN(4, 6, rngs), ConvBN(6, 5, rngs)
        self.head = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x, train_flag=False, note="eval"):
        h = self.b(self.a(x))
        return {"logits": self.head(h.mean((1, 2))), "pooled": h.max((1, 2)), "note_len": len(note)}


NNX: dict[str, tuple[Callable, tuple, bool]] = {
    "nnx_chain": (_nnx(8, lambda m, h: h), (), True),
    "nnx_depthwise_m2": (_nnx(16, lambda m, h: m.layers[0](h), lambda r: [ConvBN(8, 16, r, groups=8)]), (), True),
    "nnx_grouped_g2": (_nnx(8, lambda m, h: m.layers[0](h), lambda r: [ConvBN(8, 8, r, groups=2)]), (), True),
    "nnx_shuffle": (_nnx(8, lambda m, h: shuffle(h, 2)), (), True),
    "nnx_split_add": (_nnx(4, lambda m, h: sum(jnp.split(h, 2, -1))), (), True),
    "nnx_concat": (
        _nnx(14, lambda m, h: jnp.concatenate([h, m.layers[0](h)], -1), lambda r: [ConvBN(8, 6, r)]),
        (),
        True,
    ),
    "nnx_repeat": (_nnx(16, lambda m, h: jnp.repeat(h, 2, -1)), (), True),
    "nnx_pixel_shuffle_tf": (_nnx(2, lambda m, h: depth_to_space_tf(h, 2)), (), True),
    "nnx_se": (_nnx(8, lambda m, h: m.layers[0](h), lambda r: [NnxSE(8, r)]), (), True),
    "nnx_gelu": (_nnx(8, lambda m, h: h, act=nnx.gelu), (), False),
    "nnx_bn_no_scale": (_nnx(8, lambda m, h: h, use_scale=False), (), True),
    "nnx_literals": (
        _nnx(8, lambda m, h: nnx.avg_pool(h * jnp.ones((8,)), (3, 3), padding="SAME", count_include_pad=False)),
        (),
        True,
    ),
    "nnx_mnist_rngs": (NnxMnist, ("rngs",), True),
    "nnx_outputs_and_flags": (NnxTwoOutputs, (True, "eval"), True),
}
